"""The demo studies a new sandbox starts with: deterministic, small, no numpy.

Five patients (two with non-ASCII names, in ISO_IR 192), seven studies of CT
and MR images (16x16 or 32x32, 16 bits, 12 stored), 1-3 series of 2-4
instances each. The same every time: UIDs derive from a fixed root, pixels
from a fixed seed, so that two fresh sandboxes hold byte-identical files.
"""

from __future__ import annotations

import random
import struct
import uuid
from dataclasses import dataclass

from medimg_cli.sandbox.store import Archive

UID_ROOT = "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "urn:medimg:sandbox-demo").int)
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@dataclass(frozen=True)
class DemoPatient:
    patient_id: str
    name: str
    birth_date: str
    sex: str


@dataclass(frozen=True)
class DemoStudy:
    patient: int
    date: str
    time: str
    modality: str
    description: str
    referring: str
    series: tuple[str, ...]  # series descriptions


PATIENTS = (
    DemoPatient("DEMO001", "DOE^JOHN", "19700101", "M"),
    DemoPatient("DEMO002", "DOE^JANE", "19751231", "F"),
    DemoPatient("DEMO003", "Müller^Jürgen", "19600615", "M"),
    DemoPatient("DEMO004", "山田^太郎", "19920303", "M"),
    DemoPatient("DEMO005", "SMITH^ANNA", "19880229", "F"),
)

STUDIES = (
    DemoStudy(0, "20240115", "083000", "CT", "CT CHEST", "HOUSE^GREGORY",
              ("AXIAL 5MM", "CORONAL MPR")),
    DemoStudy(0, "20240610", "141500", "MR", "MR KNEE LEFT", "GREY^MEREDITH", ("T1 SAG",)),
    DemoStudy(1, "20240131", "235959", "CT", "CT ABDOMEN", "HOUSE^GREGORY",
              ("AXIAL 5MM", "SCOUT", "CORONAL MPR")),
    DemoStudy(2, "20240415", "090500", "MR", "MR Schädel", "Weiß^Jörg", ("T2 AX", "FLAIR")),
    DemoStudy(3, "20240610", "071500", "MR", "MR 頭部", "鈴木^一郎", ("T1 SAG",)),
    DemoStudy(4, "20241231", "120000", "CT", "CT HEAD", "WILSON^JAMES", ("AXIAL 5MM",)),
    DemoStudy(4, "20250301", "101010", "MR", "MR PELVIS", "WILSON^JAMES", ("T2 AX", "T1 SAG")),
)


def _pixels(rng: random.Random, size: int) -> bytes:
    values = [(r * 2048 // size + c * 1024 // size + rng.randrange(512)) & 0x0FFF
              for r in range(size) for c in range(size)]
    return struct.pack(f"<{len(values)}H", *values)


def demo_files() -> list[bytes]:
    """The demo instances as DICOM Part 10 files (Explicit VR Little Endian)."""
    from io import BytesIO

    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID

    rng = random.Random(20240601)
    files: list[bytes] = []
    for s_idx, spec in enumerate(STUDIES, start=1):
        patient = PATIENTS[spec.patient]
        study_uid = f"{UID_ROOT}.1.{s_idx}"
        sop_class = CT_IMAGE if spec.modality == "CT" else MR_IMAGE
        for se_idx, series_description in enumerate(spec.series, start=1):
            series_uid = f"{study_uid}.{se_idx}"
            size = 16 if (s_idx + se_idx) % 2 else 32
            for i_idx in range(1, 2 + rng.randint(1, 3)):
                sop_uid = f"{series_uid}.{i_idx}"
                meta = FileMetaDataset()
                meta.MediaStorageSOPClassUID = UID(sop_class)
                meta.MediaStorageSOPInstanceUID = UID(sop_uid)
                meta.TransferSyntaxUID = UID(EXPLICIT_LE)
                ds = Dataset()
                ds.file_meta = meta
                ds.SpecificCharacterSet = "ISO_IR 192"
                ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
                ds.SOPClassUID = sop_class
                ds.SOPInstanceUID = sop_uid
                ds.StudyDate = ds.SeriesDate = ds.ContentDate = spec.date
                ds.StudyTime = ds.SeriesTime = ds.ContentTime = spec.time
                ds.AccessionNumber = f"DEMOACC{s_idx:03d}"
                ds.Modality = spec.modality
                ds.Manufacturer = "MEDIMG SANDBOX"
                ds.InstitutionName = "MEDIMG DEMO HOSPITAL"
                ds.ReferringPhysicianName = spec.referring
                ds.StudyDescription = spec.description
                ds.SeriesDescription = series_description
                ds.PatientName = patient.name
                ds.PatientID = patient.patient_id
                ds.PatientBirthDate = patient.birth_date
                ds.PatientSex = patient.sex
                ds.SliceThickness = "5"
                ds.StudyInstanceUID = study_uid
                ds.SeriesInstanceUID = series_uid
                ds.StudyID = f"DEMO{s_idx}"
                ds.SeriesNumber = se_idx
                ds.InstanceNumber = i_idx
                ds.ImagePositionPatient = [0, 0, 5 * (i_idx - 1)]
                ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
                ds.FrameOfReferenceUID = f"{series_uid}.0"
                ds.SamplesPerPixel = 1
                ds.PhotometricInterpretation = "MONOCHROME2"
                ds.Rows = ds.Columns = size
                ds.PixelSpacing = [1, 1]
                ds.BitsAllocated = 16
                ds.BitsStored = 12
                ds.HighBit = 11
                ds.PixelRepresentation = 0
                if spec.modality == "CT":
                    ds.RescaleIntercept = "-1024"
                    ds.RescaleSlope = "1"
                    ds.WindowCenter = "40"
                    ds.WindowWidth = "400"
                ds.PixelData = _pixels(rng, size)
                buf = BytesIO()
                dcmwrite(buf, ds, enforce_file_format=True)
                files.append(buf.getvalue())
    return files


def seed(archive: Archive) -> int:
    """Store the demo set (call on an empty archive). Returns the number of instances."""
    count = 0
    for data in demo_files():
        archive.store_part10(data)
        count += 1
    return count
