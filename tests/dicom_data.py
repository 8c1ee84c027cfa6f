"""Deterministic DICOM test data, generated with pydicom (no numpy, no binary fixtures).

``generate(out_dir, seed)`` writes a small archive -- 6 patients, 10 studies, each
with 1-3 series of 1-3 instances (CT and MR, 8x8 or 16x16, 16-bit MONOCHROME2) --
and returns a :class:`Manifest` from which tests compute the answers a PACS
should give. Patient names, birth dates, study dates, times, descriptions and
accession numbers are fixed tables (the same for every seed); the seed picks
series/instance counts, image sizes and pixel values, and is part of every UID,
so data made with two seeds can live in one PACS side by side.

``generate_many_studies(out_dir, n, seed)`` writes *n* single-instance studies
fast (one encoded template, patched per file) for benchmarks.

``generate_one_study(out_dir, n_series, per_series, rows, columns, seed)`` writes
one study of ``n_series`` x ``per_series`` CT images of any size, for retrieval
benchmarks.

Every file is a DICOM Part 10 file, Explicit VR Little Endian, written with
``enforce_file_format=True``.
"""

from __future__ import annotations

import random
import struct
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from io import BytesIO
from pathlib import Path

from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

__all__ = [
    "UID_ROOT",
    "Instance",
    "Manifest",
    "Patient",
    "Series",
    "Study",
    "generate",
    "generate_many_studies",
    "generate_one_study",
    "make_dataset",
]

# A "2.25." root (UUID-derived, PS3.5 B.2) needs no registration; derived from a
# fixed name so that it never changes. 2.25.<39 digits> leaves ~20 characters
# for ".{seed}.{kind}.{counters}" within the 64-character UID limit.
UID_ROOT = "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "urn:medimg:test-data").int)

MODALITY_SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage}

INSTITUTION = "MEDIMG TEST HOSPITAL"


@dataclass(frozen=True)
class Patient:
    patient_id: str
    name: str  # Unicode, as a PACS should give it back
    birth_date: str  # YYYYMMDD
    sex: str  # M | F | O
    specific_character_set: str | None  # None: default repertoire (ASCII)


@dataclass(frozen=True)
class Study:
    study_uid: str
    patient_id: str
    study_date: str  # YYYYMMDD
    study_time: str  # HHMMSS
    accession_number: str
    study_id: str
    description: str
    referring_physician: str  # may be "" (present, empty)
    modalities: tuple[str, ...]  # sorted, distinct: what ModalitiesInStudy should be


@dataclass(frozen=True)
class Series:
    series_uid: str
    study_uid: str
    modality: str
    series_number: int
    description: str


@dataclass(frozen=True)
class Instance:
    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    patient_id: str
    instance_number: int
    rows: int
    columns: int
    path: Path


@dataclass
class Manifest:
    """Everything that was written, in generation order."""

    root: Path
    seed: int
    patients: list[Patient] = field(default_factory=list)
    studies: list[Study] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)

    @property
    def paths(self) -> list[Path]:
        return [i.path for i in self.instances]

    def patient(self, patient_id: str) -> Patient:
        for p in self.patients:
            if p.patient_id == patient_id:
                return p
        raise KeyError(patient_id)

    def patient_named(self, name: str) -> Patient:
        for p in self.patients:
            if p.name == name:
                return p
        raise KeyError(name)

    def study(self, study_uid: str) -> Study:
        for s in self.studies:
            if s.study_uid == study_uid:
                return s
        raise KeyError(study_uid)

    def studies_of(self, patient_id: str) -> list[Study]:
        return [s for s in self.studies if s.patient_id == patient_id]

    def series_of(self, study_uid: str) -> list[Series]:
        return [s for s in self.series if s.study_uid == study_uid]

    def instances_of_study(self, study_uid: str) -> list[Instance]:
        return [i for i in self.instances if i.study_uid == study_uid]

    def instances_of_series(self, series_uid: str) -> list[Instance]:
        return [i for i in self.instances if i.series_uid == series_uid]


# --------------------------------------------------------------------------
# Fixed tables (seed-independent), so tests may also rely on them directly.

PATIENTS: tuple[Patient, ...] = (
    Patient("PAT001", "DOE^JOHN", "19700101", "M", None),
    Patient("PAT002", "DOE^JANE", "19751231", "F", None),
    Patient("PAT003", "SMITH^ANNA", "19880229", "F", None),
    Patient("PAT004", "Müller^Jürgen", "19600615", "M", "ISO_IR 100"),
    Patient("PAT005", "山田^太郎", "19920303", "M", "ISO_IR 192"),
    Patient("PAT006", "NGUYEN^VAN AN", "20050707", "O", None),
)


@dataclass(frozen=True)
class _StudySpec:
    patient: int  # index into PATIENTS
    date: str
    time: str
    modalities: tuple[str, ...]  # first one is the main modality
    description: str
    referring: str


# Dates chosen for range tests: month ends / starts, two studies on one day,
# first and last day of the year.
_STUDIES: tuple[_StudySpec, ...] = (
    _StudySpec(0, "20240115", "083000", ("CT",), "CT CHEST", "HOUSE^GREGORY"),
    _StudySpec(0, "20240610", "141500", ("MR",), "MR KNEE LEFT", "GREY^MEREDITH"),
    _StudySpec(1, "20240131", "235959", ("CT",), "CT ABDOMEN", "HOUSE^GREGORY"),
    _StudySpec(1, "20240201", "000000", ("MR",), "MR BRAIN", ""),
    _StudySpec(2, "20240301", "101010", ("CT", "MR"), "CT MR PELVIS", "WILSON^JAMES"),
    _StudySpec(2, "20241231", "120000", ("CT",), "CT HEAD", "GREY^MEREDITH"),
    _StudySpec(3, "20240415", "090500", ("MR",), "MR Schädel", "Weiß^Jörg"),
    _StudySpec(3, "20240920", "163000", ("CT",), "CT Thorax", "HOUSE^GREGORY"),
    _StudySpec(4, "20240610", "071500", ("MR",), "MR 頭部", "鈴木^一郎"),
    _StudySpec(5, "20240101", "111111", ("CT",), "CT SPINE", "WILSON^JAMES"),
)

_SERIES_DESCRIPTIONS = {
    "CT": ("AXIAL 5MM", "CORONAL MPR", "SCOUT"),
    "MR": ("T1 SAG", "T2 AX", "FLAIR"),
}

MAX_INSTANCES = 60


def _uid(seed: int, kind: int, *counters: int) -> str:
    uid = ".".join([UID_ROOT, str(seed), str(kind), *(str(c) for c in counters)])
    if len(uid) > 64:
        raise ValueError(f"UID too long ({len(uid)} > 64): {uid}")
    return uid


def _pixel_bytes(rng: random.Random, rows: int, columns: int) -> bytes:
    """A gradient plus noise, 12 bits stored in 16, little endian."""
    values = [
        (r * 2048 // rows + c * 1024 // columns + rng.randrange(512)) & 0x0FFF
        for r in range(rows)
        for c in range(columns)
    ]
    return struct.pack(f"<{len(values)}H", *values)


def make_dataset(
    patient: Patient,
    study: Study,
    series: Series,
    sop_instance_uid: str,
    instance_number: int,
    pixel_data: bytes,
    rows: int,
    columns: int,
) -> Dataset:
    """One CT or MR image with file meta.

    Write it with ``dcmwrite(path, ds, enforce_file_format=True)``.
    """
    sop_class = MODALITY_SOP_CLASS[series.modality]

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    if patient.specific_character_set:
        ds.SpecificCharacterSet = patient.specific_character_set
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyDate = study.study_date
    ds.SeriesDate = study.study_date
    ds.ContentDate = study.study_date
    ds.StudyTime = study.study_time
    ds.SeriesTime = study.study_time
    ds.ContentTime = study.study_time
    ds.AccessionNumber = study.accession_number
    ds.Modality = series.modality
    ds.Manufacturer = "MEDIMG"
    ds.InstitutionName = INSTITUTION
    ds.ReferringPhysicianName = study.referring_physician
    ds.StudyDescription = study.description
    ds.SeriesDescription = series.description
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.SliceThickness = "5"
    if series.modality == "CT":
        ds.KVP = "120"
    else:
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = "500"
        ds.EchoTime = "15"
        ds.EchoTrainLength = "1"
        ds.MagneticFieldStrength = "1.5"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series.series_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = series.series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [0, 0, 5 * (instance_number - 1)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = series.series_uid + ".0"
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = str(5 * (instance_number - 1))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelSpacing = [1, 1]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if series.modality == "CT":
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
    ds.PixelData = pixel_data
    return ds


def generate(out_dir: Path, seed: int = 1234) -> Manifest:
    """Write the small archive under ``out_dir`` and describe it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    manifest = Manifest(root=out_dir, seed=seed, patients=list(PATIENTS))

    for s_idx, spec in enumerate(_STUDIES, start=1):
        patient = PATIENTS[spec.patient]
        study_uid = _uid(seed, 1, s_idx)
        n_series = max(rng.randint(1, 3), len(spec.modalities))
        series_modalities = [
            spec.modalities[j] if j < len(spec.modalities) else spec.modalities[0]
            for j in range(n_series)
        ]
        study = Study(
            study_uid=study_uid,
            patient_id=patient.patient_id,
            study_date=spec.date,
            study_time=spec.time,
            accession_number=f"ACC{s_idx:04d}",
            study_id=f"ST{s_idx:04d}",
            description=spec.description,
            referring_physician=spec.referring,
            modalities=tuple(sorted(set(series_modalities))),
        )
        manifest.studies.append(study)

        for se_idx, modality in enumerate(series_modalities, start=1):
            series = Series(
                series_uid=_uid(seed, 2, s_idx, se_idx),
                study_uid=study_uid,
                modality=modality,
                series_number=se_idx,
                description=_SERIES_DESCRIPTIONS[modality][(se_idx - 1) % 3],
            )
            manifest.series.append(series)
            size = rng.choice((8, 16))
            n_instances = rng.randint(1, 3)
            for i_idx in range(1, n_instances + 1):
                sop_uid = _uid(seed, 3, s_idx, se_idx, i_idx)
                ds = make_dataset(
                    patient,
                    study,
                    series,
                    sop_uid,
                    i_idx,
                    _pixel_bytes(rng, size, size),
                    size,
                    size,
                )
                path = out_dir / f"s{s_idx:02d}" / f"se{se_idx}" / f"i{i_idx}.dcm"
                path.parent.mkdir(parents=True, exist_ok=True)
                dcmwrite(path, ds, enforce_file_format=True)
                manifest.instances.append(
                    Instance(
                        sop_instance_uid=sop_uid,
                        sop_class_uid=str(MODALITY_SOP_CLASS[modality]),
                        series_uid=series.series_uid,
                        study_uid=study_uid,
                        patient_id=patient.patient_id,
                        instance_number=i_idx,
                        rows=size,
                        columns=size,
                        path=path,
                    )
                )

    if len(manifest.instances) > MAX_INSTANCES:  # keep loading fast
        raise AssertionError(
            f"seed {seed} made {len(manifest.instances)} instances (> {MAX_INSTANCES})"
        )
    return manifest


# --------------------------------------------------------------------------
# Many studies, fast: encode one file, patch fixed-width fields per study.

# Placeholders must have the exact width of their replacements, so the encoded
# lengths (and the file meta group length) stay valid.
_PH_PATIENT_ID = "ZQPATIDZQ"  # -> BENCHnnnn (9)
_PH_PATIENT_NAME = "ZQPNAMEZQZQZQ"  # -> BENCH^PATnnnn (13)
_PH_DATE = "19000101"  # -> YYYYMMDD
_PH_TIME = "215931"  # -> HHMMSS
_PH_ACCESSION = "ZQACCESSZQ"  # -> Bnnnnnnnnn (10)
_PH_STUDY_ID = "ZQSTIDZQ"  # -> Bnnnnnnn (8)


def generate_many_studies(out_dir: Path, n: int, seed: int = 4321) -> Manifest:
    """Write ``n`` single-instance CT studies (8x8) under ``out_dir``; fast.

    About n/5 patients (BENCH0000...); study dates spread over 2023-2024.
    UIDs: ``{UID_ROOT}.{seed}.9.{1000000 + i}`` for the study, ``.1`` appended
    for the series and ``.1.1`` for the instance.
    """
    if not 0 < n < 9_000_000:
        raise ValueError("n must be in 1..8999999")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    n_patients = max(1, n // 5)
    if n_patients > 10_000:
        n_patients = 10_000

    study_base = _uid(seed, 9, 1_000_000)
    _uid(seed, 9, 1_000_000 + n, 1, 1)  # raises if the longest UID is too long

    ph_patient = Patient(_PH_PATIENT_ID, _PH_PATIENT_NAME, "19800101", "O", None)
    ph_study = Study(
        study_uid=study_base,
        patient_id=_PH_PATIENT_ID,
        study_date=_PH_DATE,
        study_time=_PH_TIME,
        accession_number=_PH_ACCESSION,
        study_id=_PH_STUDY_ID,
        description="BENCH CT",
        referring_physician="",
        modalities=("CT",),
    )
    ph_series = Series(study_base + ".1", study_base, "CT", 1, "BENCH")
    ds = make_dataset(
        ph_patient, ph_study, ph_series, study_base + ".1.1", 1,
        _pixel_bytes(rng, 8, 8), 8, 8,
    )
    buf = BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    template = buf.getvalue()

    def check(placeholder: str, count: int) -> None:
        found = template.count(placeholder.encode("ascii"))
        if found != count:
            raise AssertionError(f"placeholder {placeholder!r} found {found}x, want {count}")

    # study UID: meta SOP instance UID, SOP instance, study, series, frame of reference
    check(study_base, 5)
    for ph in (_PH_PATIENT_ID, _PH_PATIENT_NAME, _PH_ACCESSION, _PH_STUDY_ID):
        check(ph, 1)
    check(_PH_DATE, 3)  # study, series, content date
    check(_PH_TIME, 3)

    patients = [
        Patient(f"BENCH{p:04d}", f"BENCH^PAT{p:04d}", "19800101", "O", None)
        for p in range(n_patients)
    ]
    manifest = Manifest(root=out_dir, seed=seed, patients=patients)
    day0 = date(2023, 1, 1)
    sop_class = str(CTImageStorage)
    replacements_ascii = [
        study_base.encode(), _PH_PATIENT_ID.encode(), _PH_PATIENT_NAME.encode(),
        _PH_DATE.encode(), _PH_TIME.encode(), _PH_ACCESSION.encode(), _PH_STUDY_ID.encode(),
    ]
    for i in range(n):
        patient = patients[rng.randrange(n_patients)]
        study_uid = _uid(seed, 9, 1_000_000 + i)
        study_date = (day0 + timedelta(days=rng.randrange(731))).strftime("%Y%m%d")
        study_time = f"{rng.randrange(24):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"
        accession = f"B{i:09d}"
        study_id = f"B{i:07d}"
        values = [
            study_uid, patient.patient_id, patient.name,
            study_date, study_time, accession, study_id,
        ]
        data = template
        for old, new in zip(replacements_ascii, values, strict=True):
            data = data.replace(old, new.encode("ascii"))
        path = out_dir / f"{i:07d}.dcm"
        path.write_bytes(data)
        series_uid = study_uid + ".1"
        manifest.studies.append(
            Study(study_uid, patient.patient_id, study_date, study_time, accession,
                  study_id, "BENCH CT", "", ("CT",))
        )
        manifest.series.append(Series(series_uid, study_uid, "CT", 1, "BENCH"))
        manifest.instances.append(
            Instance(series_uid + ".1", sop_class, series_uid, study_uid,
                     patient.patient_id, 1, 8, 8, path)
        )
    return manifest


# --------------------------------------------------------------------------
# One big study, for retrieval benchmarks.


def generate_one_study(
    out_dir: Path,
    n_series: int,
    per_series: int,
    rows: int,
    columns: int,
    seed: int = 5678,
) -> Manifest:
    """Write one CT study of ``n_series`` series x ``per_series`` instances, rows x columns.

    16-bit pixels (12 stored). One gradient-plus-noise image is made per
    series; each instance gets it rotated by a different number of pixels, so
    no two instances share their pixel data yet generation stays fast.
    UIDs: ``{UID_ROOT}.{seed}.10.{rows}`` for the study, ``.{series}`` appended
    for each series and ``.{series}.{instance}`` for each instance (1-based).
    Patient BIGSTUDY01, study date 2024-05-01.
    """
    if n_series < 1 or per_series < 1 or rows < 1 or columns < 1:
        raise ValueError("n_series, per_series, rows and columns must be >= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    patient = Patient("BIGSTUDY01", "BIG^STUDY", "19800101", "O", None)
    study_uid = _uid(seed, 10, rows)
    _uid(seed, 10, rows, n_series, per_series)  # raises if the longest UID is too long
    study = Study(
        study_uid=study_uid,
        patient_id=patient.patient_id,
        study_date="20240501",
        study_time="120000",
        accession_number="BIG0001",
        study_id="BIG1",
        description=f"BENCH CT {rows}x{columns}",
        referring_physician="",
        modalities=("CT",),
    )
    manifest = Manifest(root=out_dir, seed=seed, patients=[patient], studies=[study])
    n_pixels = rows * columns
    for se_idx in range(1, n_series + 1):
        series = Series(f"{study_uid}.{se_idx}", study_uid, "CT", se_idx,
                        f"BENCH SERIES {se_idx}")
        manifest.series.append(series)
        base = _pixel_bytes(rng, rows, columns)
        series_dir = out_dir / f"se{se_idx}"
        series_dir.mkdir(parents=True, exist_ok=True)
        for i_idx in range(1, per_series + 1):
            shift = 2 * (i_idx * 7919 % n_pixels)  # bytes, whole pixels
            pixels = base[shift:] + base[:shift]
            sop_uid = f"{series.series_uid}.{i_idx}"
            ds = make_dataset(patient, study, series, sop_uid, i_idx, pixels, rows, columns)
            path = series_dir / f"i{i_idx:05d}.dcm"
            dcmwrite(path, ds, enforce_file_format=True)
            manifest.instances.append(
                Instance(sop_uid, str(CTImageStorage), series.series_uid, study_uid,
                         patient.patient_id, i_idx, rows, columns, path)
            )
    return manifest
