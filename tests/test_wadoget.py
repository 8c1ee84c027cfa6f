"""`medimg wadoget` against Orthanc's DICOMweb plugin, and against a faulty server."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Result, medimg, write_config
from dicom_data import Instance, Manifest
from peers import Orthanc
from test_move_get import assert_retrieved, dataset_part, expected_path

from medimg_cli.storage import PART_SUFFIX


@pytest.fixture
def config(tmp_path: Path, orthanc: Orthanc) -> Path:
    return write_config(tmp_path / "c.toml", orthanc.dicomweb_profile_toml("web"))


def biggest_study(data: Manifest) -> str:
    return max(data.studies, key=lambda s: len(data.instances_of_study(s.study_uid))).study_uid


def wadoget(config: Path, out: Path, *args: str, code: int = 0) -> Result:
    result = medimg("wadoget", "web", "--out", str(out), *args, config=config)
    assert result.code == code, result.stderr
    return result


def test_study_series_and_instance(config: Path, tmp_path: Path, dicom_data: Manifest) -> None:
    study = biggest_study(dicom_data)
    instances = dicom_data.instances_of_study(study)
    report = tmp_path / "report.json"
    result = wadoget(config, tmp_path / "study", study, "--report", str(report))
    assert_retrieved(tmp_path / "study", instances)
    lines = result.jsonl()
    assert sorted(line["sop_instance_uid"] for line in lines) == sorted(
        i.sop_instance_uid for i in instances)
    assert all(Path(line["path"]).stat().st_size == line["bytes"] for line in lines)
    assert f"wadoget: {len(instances)} done, 0 warnings, 0 failed" in result.stderr
    data = json.loads(report.read_text())
    assert data["exit_code"] == 0 and data["done"] == len(instances)
    assert data["items"][0]["name"] == study and data["items"][0]["bytes"] > 0

    series = dicom_data.series_of(study)[0]
    wadoget(config, tmp_path / "series", study, series.series_uid)
    assert_retrieved(tmp_path / "series", dicom_data.instances_of_series(series.series_uid))

    inst = dicom_data.instances_of_series(series.series_uid)[-1]
    wadoget(config, tmp_path / "one", f"{inst.study_uid}/{inst.series_uid}/{inst.sop_instance_uid}")
    assert_retrieved(tmp_path / "one", [inst])


def test_uids_from_stdin_with_several_studies(config: Path, tmp_path: Path,
                                              dicom_data: Manifest) -> None:
    studies = [s.study_uid for s in dicom_data.studies[:3]]
    out = tmp_path / "out"
    result = medimg("wadoget", "web", "--uids-from", "-", "--out", str(out), config=config,
                    input="\n".join(studies) + "\n")
    assert result.code == 0, result.stderr
    assert_retrieved(out, [i for s in studies for i in dicom_data.instances_of_study(s)])


def test_skip_existing_fetches_only_what_is_missing(config: Path, tmp_path: Path,
                                                    dicom_data: Manifest) -> None:
    study = biggest_study(dicom_data)
    instances = dicom_data.instances_of_study(study)
    out = tmp_path / "out"
    wadoget(config, out, study)
    removed = [expected_path(out, i) for i in instances[::2]]
    for path in removed:
        path.unlink()
    kept = {p: p.stat().st_mtime_ns for p in out.rglob("*.dcm")}
    result = wadoget(config, out, study, "--skip-existing")
    assert_retrieved(out, instances)
    assert {Path(r["path"]) for r in result.jsonl()} == set(removed)
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in kept.items())
    assert f"{len(removed)} done, 0 warnings, 0 failed, {len(kept)} skipped" in result.stderr


def test_metadata_to_stdout_and_to_a_file(config: Path, tmp_path: Path,
                                          dicom_data: Manifest) -> None:
    study = biggest_study(dicom_data)
    instances = dicom_data.instances_of_study(study)
    result = wadoget(config, tmp_path / "o", study, "--metadata")
    records = json.loads(result.stdout)
    assert sorted(r["00080018"]["Value"][0] for r in records) == sorted(
        i.sop_instance_uid for i in instances)
    assert not (tmp_path / "o").exists()
    target = tmp_path / "meta.json"
    wadoget(config, tmp_path / "o", study, "--metadata", "--metadata-out", str(target))
    assert len(json.loads(target.read_text())) == len(instances)


def test_explicit_transfer_syntax(config: Path, tmp_path: Path, dicom_data: Manifest) -> None:
    inst = dicom_data.instances[0]
    wadoget(config, tmp_path / "o", inst.study_uid, inst.series_uid, inst.sop_instance_uid,
            "--transfer-syntax", "1.2.840.10008.1.2.1")
    got = expected_path(tmp_path / "o", inst)
    assert b"1.2.840.10008.1.2.1" in got.read_bytes()[:400]
    result = wadoget(config, tmp_path / "o", inst.study_uid, "--transfer-syntax", "1.2.x",
                     code=2)
    assert "--transfer-syntax '1.2.x'" in result.stderr


def test_unknown_study_is_a_remote_failure(config: Path, tmp_path: Path) -> None:
    result = wadoget(config, tmp_path / "o", "1.2.3.4.5.6.7.8.9", code=5)
    assert "1.2.3.4.5.6.7.8.9" in result.stderr and "HTTP 404" in result.stderr
    assert not list((tmp_path / "o").rglob("*.dcm"))


def test_dimse_profile_is_told_to_use_get(tmp_path: Path, orthanc: Orthanc) -> None:
    config = write_config(tmp_path / "c.toml", orthanc.profile_toml("web"))
    result = medimg("wadoget", "web", "1.2.3", config=config)
    assert result.code == 2
    assert "`wadoget` does not work with profile 'web', a dimse profile" in result.stderr


def test_frames_are_the_pixel_data(config: Path, tmp_path: Path, dicom_data: Manifest) -> None:
    import pydicom

    inst = dicom_data.instances[0]
    out = tmp_path / "o"
    result = wadoget(config, out, inst.study_uid, inst.series_uid, inst.sop_instance_uid,
                     "--frames", "1")
    frame = expected_path(out, inst).with_name(f"{inst.sop_instance_uid}.frame-1.raw")
    assert frame.read_bytes() == pydicom.dcmread(inst.path).PixelData
    assert [Path(r["path"]) for r in result.jsonl()] == [frame]
    assert [p for p in out.rglob("*") if p.is_file()] == [frame]


def test_missing_frame_is_a_remote_failure(config: Path, tmp_path: Path,
                                           dicom_data: Manifest) -> None:
    inst = dicom_data.instances[0]
    out = tmp_path / "o"
    result = wadoget(config, out, inst.study_uid, inst.series_uid, inst.sop_instance_uid,
                     "--frames", "7", code=5)
    assert "frames of" in result.stderr
    assert not [p for p in out.rglob("*") if p.is_file()]


@pytest.mark.parametrize(("accept", "magic", "suffix"),
                         [("image/png", b"\x89PNG", "png"), ("image/jpeg", b"\xff\xd8", "jpg")])
def test_rendered_image(config: Path, tmp_path: Path, dicom_data: Manifest, accept: str,
                        magic: bytes, suffix: str) -> None:
    inst = dicom_data.instances[0]
    out = tmp_path / "o"
    wadoget(config, out, f"{inst.study_uid}/{inst.series_uid}/{inst.sop_instance_uid}",
            "--rendered", "--accept", accept)
    image = expected_path(out, inst).with_name(f"{inst.sop_instance_uid}.{suffix}")
    assert image.read_bytes().startswith(magic)
    assert [p for p in out.rglob("*") if p.is_file()] == [image]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--frames", "1"), "work on instances"),
        (("--rendered",), "work on instances"),
        (("--frames", "0"), "frames start at 1"),
        (("--frames", "2-x"), "is not a frame number"),
        (("--accept", "image/png"), "--accept goes with --rendered"),
        (("--rendered", "--accept", "text/html"), "expected image/jpeg"),
        (("--metadata", "--rendered"), "exclude each other"),
        (("--metadata-out", "x.json"), "goes with --metadata"),
    ],
)
def test_bad_wadoget_options_are_usage_errors(config: Path, tmp_path: Path,
                                              args: tuple[str, ...], fragment: str) -> None:
    result = wadoget(config, tmp_path / "o", "1.2.3", *args, code=2)
    assert fragment in result.stderr
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------
# Fault injection: a loopback server that sends what each test says


BOUNDARY = "wado-test-boundary"
Serve = Callable[..., str]


def multipart(parts: list[bytes], boundary: str = BOUNDARY) -> bytes:
    out = b""
    for part in parts:
        out += (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part
                + b"\r\n")
    return out + f"--{boundary}--\r\n".encode()


@pytest.fixture
def fault_server() -> Iterator[Serve]:
    """Serve canned bodies: `serve(body, type, routes)` -> URL.

    `routes` maps a path below the DICOMweb root (no query) to (body, type);
    every other GET gets `body`. Each answer closes the connection at its end.
    """
    answer: dict[str, Any] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0].removeprefix("/dicom-web/")
            body, kind = answer["routes"].get(path, (answer["body"], answer["type"]))
            answer["seen"].append(path)
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def serve(body: bytes, content_type: str,
              routes: dict[str, tuple[bytes, str]] | None = None) -> str:
        answer.update(body=body, type=content_type, routes=routes or {}, seen=[])
        return f"http://127.0.0.1:{server.server_address[1]}/dicom-web"

    try:
        yield serve
    finally:
        server.shutdown()
        server.server_close()


def fault_config(tmp_path: Path, url: str) -> Path:
    return write_config(tmp_path / "f.toml",
                        f'[profiles.web]\ntype = "dicomweb"\nurl = "{url}"\nauth = "none"\n')


def three(dicom_data: Manifest) -> list[Instance]:
    study = biggest_study(dicom_data)
    return dicom_data.instances_of_study(study)[:3]


def assert_clean(out: Path, kept: list[Instance]) -> None:
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert files == sorted(expected_path(out, i) for i in kept)
    for inst in kept:
        assert dataset_part(expected_path(out, inst)) == dataset_part(inst.path)
    assert not list(out.rglob(f"*{PART_SUFFIX}"))


CT = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'


def test_stream_cut_mid_part_keeps_complete_parts(
    tmp_path: Path, dicom_data: Manifest, fault_server: Serve
) -> None:
    insts = three(dicom_data)
    full = multipart([i.path.read_bytes() for i in insts])
    third = full.index(insts[2].path.read_bytes())
    url = fault_server(full[: third + 500], CT)
    out = tmp_path / "out"
    result = medimg("wadoget", "web", insts[0].study_uid, "--out", str(out),
                    config=fault_config(tmp_path, url))
    assert result.code == 6, result.stderr
    assert "stream ended inside part 3" in result.stderr
    assert "2 instances saved" in result.stderr
    assert len(result.jsonl()) == 2
    assert_clean(out, insts[:2])


def test_stream_cut_in_the_first_part_is_exit_5(
    tmp_path: Path, dicom_data: Manifest, fault_server: Serve
) -> None:
    insts = three(dicom_data)
    full = multipart([i.path.read_bytes() for i in insts])
    url = fault_server(full[:1000], CT)
    out = tmp_path / "out"
    result = medimg("wadoget", "web", insts[0].study_uid, "--out", str(out),
                    config=fault_config(tmp_path, url))
    assert result.code == 5, result.stderr
    assert "stream ended inside part 1" in result.stderr and "0 instances saved" in result.stderr
    assert_clean(out, [])


@pytest.mark.parametrize(
    ("content_type", "fragment"),
    [
        ('multipart/related; type="application/dicom"; boundary="not-the-one"',
         "never uses the boundary 'not-the-one'"),
        ('multipart/related; type="application/dicom"', "no usable boundary"),
        ("application/dicom", "expected a multipart response"),
    ],
)
def test_wrong_or_missing_boundary_is_exit_5(
    tmp_path: Path, dicom_data: Manifest, fault_server: Serve,
    content_type: str, fragment: str,
) -> None:
    insts = three(dicom_data)
    url = fault_server(multipart([i.path.read_bytes() for i in insts]), content_type)
    out = tmp_path / "out"
    result = medimg("wadoget", "web", insts[0].study_uid, "--out", str(out),
                    config=fault_config(tmp_path, url))
    assert result.code == 5, result.stderr
    assert fragment in result.stderr
    assert_clean(out, [])


def test_a_part_that_is_not_dicom_is_removed(
    tmp_path: Path, dicom_data: Manifest, fault_server: Serve
) -> None:
    insts = three(dicom_data)
    url = fault_server(multipart([insts[0].path.read_bytes(), b"<html>oops</html>" * 20,
                                  insts[1].path.read_bytes()]), CT)
    out = tmp_path / "out"
    result = medimg("wadoget", "web", insts[0].study_uid, "--out", str(out),
                    config=fault_config(tmp_path, url))
    assert result.code == 6, result.stderr
    assert "part 2 is not a DICOM file" in result.stderr
    assert_clean(out, insts[:1])


def test_hostile_values_cannot_escape_out(
    tmp_path: Path, dicom_data: Manifest, fault_server: Serve
) -> None:
    import io
    import warnings

    import pydicom

    inst = dicom_data.instances[0]
    ds = pydicom.dcmread(inst.path)
    ds.PatientID = "../../../../escaped"
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UID, as it should
        ds.SeriesInstanceUID = "/tmp/abs"
        ds.save_as(buf, enforce_file_format=True)
    url = fault_server(multipart([buf.getvalue()]), CT)
    out = tmp_path / "deep" / "out"
    result = medimg("wadoget", "web", inst.study_uid, "--out", str(out),
                    config=fault_config(tmp_path, url))
    assert result.code == 0, result.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".dcm"]
    assert len(files) == 1
    assert files[0].is_relative_to(out)
    assert files[0].relative_to(out).parts[0] == "_.._.._.._escaped"
    assert files[0].relative_to(out).parts[2] == "_tmp_abs"
    assert ".." not in files[0].relative_to(out).parts


def test_retries_resume_a_broken_stream_instance_by_instance(
    tmp_path: Path, dicom_data: Manifest, fault_server: Serve
) -> None:
    insts = three(dicom_data)
    study = insts[0].study_uid
    full = multipart([i.path.read_bytes() for i in insts])
    cut = full[: full.index(insts[1].path.read_bytes()) + 300]
    listing = json.dumps([
        {"0020000D": {"vr": "UI", "Value": [i.study_uid]},
         "0020000E": {"vr": "UI", "Value": [i.series_uid]},
         "00080018": {"vr": "UI", "Value": [i.sop_instance_uid]}} for i in insts]).encode()
    routes = {f"studies/{study}/instances": (listing, "application/dicom+json")}
    for i in insts:
        routes[f"studies/{study}/series/{i.series_uid}/instances/{i.sop_instance_uid}"] = (
            multipart([i.path.read_bytes()]), CT)
    url = fault_server(cut, CT, routes)
    out = tmp_path / "out"
    config = fault_config(tmp_path, url)
    result = medimg("wadoget", "web", study, "--out", str(out), "--retries", "1",
                    config=config)
    assert result.code == 0, result.stderr
    assert "stream ended inside part 2; resuming with the 2 instances not yet saved" \
        in result.stderr
    assert "wadoget: 3 done, 0 warnings, 0 failed" in result.stderr
    assert_clean(out, insts)
    # without --retries the same break is final
    result = medimg("wadoget", "web", study, "--out", str(tmp_path / "again"), config=config)
    assert result.code == 6, result.stderr
    assert_clean(tmp_path / "again", insts[:1])


def test_ctrl_c_mid_part_leaves_no_partial_file(tmp_path: Path, dicom_data: Manifest) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    insts = three(dicom_data)
    full = multipart([i.path.read_bytes() for i in insts])
    first_end = full.index(insts[1].path.read_bytes()) + 200
    release = threading.Event()

    class Stalling(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", CT)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(full[:first_end])
            self.wfile.flush()
            release.wait(30)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Stalling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "out"
    config = fault_config(tmp_path, f"http://127.0.0.1:{server.server_address[1]}/dicom-web")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIMG_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "medimg_cli", "--config", str(config), "wadoget", "web",
         insts[0].study_uid, "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 30

        def second_part_started() -> bool:
            return (expected_path(out, insts[0]).exists()
                    and bool(list(out.rglob(f"*{PART_SUFFIX}"))))

        while not second_part_started() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert second_part_started(), "the second part never started"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
        server.shutdown()
        server.server_close()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert len([line for line in stdout.splitlines() if line.strip()]) == 1
    assert_clean(out, insts[:1])


def test_layout_tags_beyond_the_first_64_kb(
    tmp_path: Path, dicom_data: Manifest, fault_server: Serve
) -> None:
    import io

    import pydicom

    inst = dicom_data.instances[0]
    ds = pydicom.dcmread(inst.path)
    ds.add_new(0x00090010, "LO", "MEDIMG TEST")
    ds.add_new(0x00091001, "OB", b"\x01" * 200_000)  # before PatientID (0010,0020)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    url = fault_server(multipart([buf.getvalue()]), CT)
    out = tmp_path / "out"
    result = medimg("wadoget", "web", inst.study_uid, "--out", str(out),
                    config=fault_config(tmp_path, url))
    assert result.code == 0, result.stderr
    target = expected_path(out, inst)
    assert target.read_bytes() == buf.getvalue()
    assert [p for p in out.rglob("*") if p.is_file()] == [target]


def test_get_with_a_dicomweb_profile_gives_the_same_tree_as_with_a_dimse_one(
    tmp_path: Path, orthanc: Any, dicom_data: Any, medimg_receive_port: int
) -> None:
    """A nightly job changes only the profile name to go from C-GET to WADO-RS."""
    config = write_config(tmp_path / "c.toml", orthanc.profile_toml("pacs"),
                          orthanc.dicomweb_profile_toml("web"))
    study = max(dicom_data.studies, key=lambda s: len(dicom_data.instances_of_study(s.study_uid)))
    trees = {}
    for name in ("pacs", "web"):
        out = tmp_path / name
        result = medimg("get", name, study.study_uid, "--out", str(out), "--report",
                        str(tmp_path / f"{name}.json"), config=config)
        assert result.code == 0, result.stderr
        assert f"get: {len(dicom_data.instances_of_study(study.study_uid))} done" in (
            result.stderr)
        trees[name] = sorted(str(p.relative_to(out)) for p in out.rglob("*.dcm"))
        assert len(result.jsonl()) == len(trees[name])
    assert trees["web"] == trees["pacs"] and trees["web"]
    refused = medimg("move", "web", study.study_uid, config=config)
    assert refused.code == 2 and "get, wadoget" in refused.stderr
