"""`medimg stow` to a DICOMweb profile (STOW-RS).

A real Orthanc with its DICOMweb plugin stores what is sent; a small HTTP
server on loopback that the test controls parses every request body as
multipart/related and answers what the test wants (failed instances,
warnings, 401, 500), which Orthanc cannot be made to do.
"""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import MEDIMG, medimg, write_config
from dicom_data import Manifest
from peers import LOOPBACK, Orthanc, PeerPool

from medimg_cli.dicomweb.stow import CHUNK, MultipartBody, batches, parse_answer
from medimg_cli.dimse.store import DicomFile, read_file_meta


def copy_files(paths: list[Path], into: Path) -> list[Path]:
    into.mkdir(parents=True, exist_ok=True)
    copies = []
    for i, path in enumerate(paths):
        copy = into / f"{i:03d}.dcm"
        shutil.copyfile(path, copy)
        copies.append(copy)
    return copies


def uid_of(path: Path) -> str:
    return read_file_meta(path).sop_instance_uid


# --------------------------------------------------------------------------
# A STOW-RS server the test controls

Answer = Callable[[list[str]], tuple[int, Any]]


def seq_item(uid: str, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"00081155": {"vr": "UI", "Value": [uid]}}
    for tag, code in extra.items():
        item[tag] = {"vr": "US", "Value": [code]}
    return item


def all_stored(uids: list[str]) -> tuple[int, Any]:
    return 200, {"00081199": {"vr": "SQ", "Value": [seq_item(u) for u in uids]}}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    boundary: str
    parts: list[tuple[dict[str, str], bytes]]

    @property
    def uids(self) -> list[str]:
        return [sop_uid(data) for _, data in self.parts]


def sop_uid(data: bytes) -> str:
    from pydicom import dcmread

    return str(dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def parse_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """A strict multipart/related parser: the body must be exactly delimited parts."""
    delimiter = b"--" + boundary.encode()
    assert body.startswith(delimiter + b"\r\n"), body[:80]
    assert body.endswith(b"\r\n" + delimiter + b"--\r\n"), body[-80:]
    inner = body[len(delimiter) + 2 : -(len(delimiter) + 6)]
    parts = []
    for raw in inner.split(b"\r\n" + delimiter + b"\r\n"):
        head, sep, data = raw.partition(b"\r\n\r\n")
        assert sep, raw[:80]
        headers = {}
        for line in head.decode("ascii").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, data))
    return parts


@dataclass
class FakeStow:
    port: int
    answer: Answer = all_stored
    requests: list[Received] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/dicom-web"

    def profile(self, name: str = "web") -> str:
        return f'[profiles.{name}]\ntype = "dicomweb"\nurl = "{self.url}"\nauth = "none"\n'


@pytest.fixture
def fake() -> Iterator[FakeStow]:
    state: dict[str, FakeStow] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            server = state["fake"]
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = b""
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    chunk = self.rfile.read(size + 2)[:size]
                    if not size:
                        break
                    body += chunk
            else:
                body = self.rfile.read(int(self.headers["Content-Length"]))
            ctype = self.headers.get("Content-Type", "")
            params = dict(p.strip().split("=", 1) for p in ctype.split(";")[1:])
            boundary = params.get("boundary", "").strip('"')
            received = Received(self.path, dict(self.headers.items()), body, boundary,
                                parse_multipart(body, boundary))
            server.requests.append(received)
            status, doc = server.answer(received.uids)
            out = json.dumps(doc).encode() if doc is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    httpd = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
    state["fake"] = FakeStow(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["fake"]
    finally:
        httpd.shutdown()
        httpd.server_close()


# --------------------------------------------------------------------------
# Real Orthanc


def orthanc_file(orthanc: Orthanc, uid: str) -> bytes:
    found = orthanc.rest("POST", "/tools/lookup", uid, content_type="text/plain")
    ids = [f["ID"] for f in found if f["Type"] == "Instance"]
    assert len(ids) == 1, found
    with orthanc._opener.open(f"{orthanc.http_url}/instances/{ids[0]}/file") as resp:
        raw: bytes = resp.read()
    return raw


def test_stow_rs_folder_to_orthanc_stores_every_instance_as_sent(
    tmp_path: Path, fresh_peers: PeerPool, dicom_data: Manifest
) -> None:
    orthanc = fresh_peers.orthanc()
    config = write_config(tmp_path / "c.toml", orthanc.dicomweb_profile_toml("web"))
    result = medimg("stow", "web", str(dicom_data.root), config=config)
    assert result.code == 0, result.stderr
    lines = result.jsonl()
    assert sorted(line["path"] for line in lines) == sorted(map(str, dicom_data.paths))
    assert {(line["status"], line["code"], line["message"]) for line in lines} == {
        ("stored", 0, "")}
    n = len(dicom_data.instances)
    assert f"stow: {n} done, 0 warnings, 0 failed, 0 skipped" in result.stderr
    assert orthanc.statistics()["CountInstances"] == n
    for path in dicom_data.paths[:: max(1, n // 8)]:
        assert orthanc_file(orthanc, uid_of(path)) == path.read_bytes(), path

    again = medimg("stow", "web", str(dicom_data.root), config=config)  # already stored: 200
    assert again.code == 0, again.stderr
    assert {line["status"] for line in again.jsonl()} == {"stored"}
    assert orthanc.statistics()["CountInstances"] == n


def test_stow_rs_skips_non_dicom_fails_corrupt_and_stores_the_rest(
    tmp_path: Path, fresh_peers: PeerPool, dicom_data: Manifest
) -> None:
    orthanc = fresh_peers.orthanc()
    folder = tmp_path / "mixed"
    good = copy_files(dicom_data.paths[:5], folder / "good")
    (folder / "notes.txt").write_text("not an image\n")
    data = dicom_data.paths[5].read_bytes()
    (folder / "truncated.dcm").write_bytes(data[: len(data) - 37])
    config = write_config(tmp_path / "c.toml", orthanc.dicomweb_profile_toml("web"))
    report = tmp_path / "report.json"
    result = medimg("stow", "web", str(folder), "--report", str(report), config=config)
    assert result.code == 6, result.stderr
    status = {Path(line["path"]).name: line["status"] for line in result.jsonl()}
    assert status == {**{p.name: "stored" for p in good}, "notes.txt": "skipped",
                      "truncated.dcm": "failed"}
    assert f"failed: {folder / 'truncated.dcm'}: corrupt DICOM file: truncated" in result.stderr
    assert "stow: 5 done, 0 warnings, 1 failed, 1 skipped" in result.stderr
    assert orthanc.statistics()["CountInstances"] == 5
    stored = {orthanc.get(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"]
              for i in orthanc.get("/instances")}
    assert stored == {uid_of(p) for p in good}
    doc = json.loads(report.read_text())
    assert (doc["done"], doc["failed"], doc["skipped"], doc["exit_code"]) == (5, 1, 1, 6)


def test_stow_rs_in_batches_to_orthanc_stores_each_file(
    tmp_path: Path, fresh_peers: PeerPool, dicom_data: Manifest
) -> None:
    orthanc = fresh_peers.orthanc()
    config = write_config(tmp_path / "c.toml", orthanc.dicomweb_profile_toml("web"))
    result = medimg("stow", "web", str(dicom_data.root), "--batch-size", "3", "--parallel", "2",
                    config=config)
    assert result.code == 0, result.stderr
    assert orthanc.statistics()["CountInstances"] == len(dicom_data.instances)


# --------------------------------------------------------------------------
# The server the test controls


def test_body_is_multipart_related_with_the_declared_boundary_and_length(
    tmp_path: Path, fake: FakeStow, dicom_data: Manifest
) -> None:
    sent = dicom_data.paths[:4]
    config = write_config(tmp_path / "c.toml", fake.profile())
    result = medimg("stow", "web", *map(str, sent), config=config)
    assert result.code == 0, result.stderr
    [req] = fake.requests
    assert req.path == "/dicom-web/studies"
    ctype = req.headers["Content-Type"]
    assert ctype.startswith('multipart/related; type="application/dicom"; boundary=')
    assert req.boundary and req.boundary.encode() not in b"".join(p.read_bytes() for p in sent)
    assert int(req.headers["Content-Length"]) == len(req.body)
    assert "Transfer-Encoding" not in req.headers
    assert req.headers["Accept"] == "application/dicom+json"
    assert [h for h, _ in req.parts] == [{"content-type": "application/dicom"}] * 4
    assert [data for _, data in req.parts] == [p.read_bytes() for p in sent]


def test_batches_by_count_and_bytes_send_every_file_exactly_once(
    tmp_path: Path, fake: FakeStow, dicom_data: Manifest
) -> None:
    paths = dicom_data.paths[:8]
    config = write_config(tmp_path / "c.toml", fake.profile())
    result = medimg("stow", "web", *map(str, paths), "--batch-size", "3", config=config)
    assert result.code == 0, result.stderr
    assert [len(r.parts) for r in fake.requests] == [3, 3, 2]
    assert [u for r in fake.requests for u in r.uids] == [uid_of(p) for p in paths]
    assert len({r.boundary for r in fake.requests}) == 3

    fake.requests.clear()
    two_files_mb = (paths[0].stat().st_size + paths[1].stat().st_size) / 1e6
    result = medimg("stow", "web", *map(str, paths[:2]), "--batch-mb", f"{two_files_mb * 0.9}",
                    config=config)
    assert result.code == 0, result.stderr
    assert [len(r.parts) for r in fake.requests] == [1, 1]

    fake.requests.clear()
    result = medimg("stow", "web", *map(str, paths), "--batch-size", "2", "--parallel", "3",
                    config=config)
    assert result.code == 0, result.stderr
    assert sorted(u for r in fake.requests for u in r.uids) == sorted(map(uid_of, paths))
    assert len(result.jsonl()) == len(paths)


def test_failed_sop_sequence_fails_those_files_with_the_reason(
    tmp_path: Path, fake: FakeStow, dicom_data: Manifest
) -> None:
    paths = dicom_data.paths[:5]
    bad = {uid_of(paths[1]), uid_of(paths[3])}

    def answer(uids: list[str]) -> tuple[int, Any]:
        ok = [seq_item(u) for u in uids if u not in bad]
        failed = [seq_item(u, **{"00081197": 0xA700}) for u in uids if u in bad]
        return 202, {"00081199": {"vr": "SQ", "Value": ok},
                     "00081198": {"vr": "SQ", "Value": failed}}

    fake.answer = answer
    config = write_config(tmp_path / "c.toml", fake.profile())
    result = medimg("stow", "web", *map(str, paths), config=config)
    assert result.code == 6, result.stderr
    by_path = {line["path"]: line for line in result.jsonl()}
    for p in paths:
        line = by_path[str(p)]
        if uid_of(p) in bad:
            assert (line["status"], line["code"]) == ("failed", 0xA700)
            assert line["message"].startswith("0xA700 Failure"), line
            assert f"failed: {p}: 0xA700" in result.stderr
        else:
            assert (line["status"], line["code"], line["message"]) == ("stored", 0, "")
    assert "stow: 3 done, 0 warnings, 2 failed, 0 skipped" in result.stderr


def test_warning_reason_counts_as_warning_and_exit_0(
    tmp_path: Path, fake: FakeStow, dicom_data: Manifest
) -> None:
    fake.answer = lambda uids: (200, {"00081199": {"vr": "SQ", "Value": [
        seq_item(u, **{"00081196": 0xB000}) for u in uids]}})
    config = write_config(tmp_path / "c.toml", fake.profile())
    result = medimg("stow", "web", str(dicom_data.paths[0]), config=config)
    assert result.code == 0, result.stderr
    [line] = result.jsonl()
    assert (line["status"], line["code"]) == ("warning", 0xB000)
    assert "stow: 0 done, 1 warnings, 0 failed" in result.stderr


def test_unauthorized_is_exit_4(tmp_path: Path, fake: FakeStow, dicom_data: Manifest) -> None:
    fake.answer = lambda uids: (401, None)
    config = write_config(tmp_path / "c.toml", fake.profile())
    result = medimg("stow", "web", *map(str, dicom_data.paths[:3]), "--batch-size", "1",
                    config=config)
    assert result.code == 4, result.stderr
    assert "HTTP 401" in result.stderr
    assert len(fake.requests) == 1  # never retried, no further batch
    assert "Traceback" not in result.stderr


def test_server_error_fails_the_batch_without_retry_and_exit_5(
    tmp_path: Path, fake: FakeStow, dicom_data: Manifest
) -> None:
    fake.answer = lambda uids: (503, None)
    config = write_config(tmp_path / "c.toml", fake.profile())
    result = medimg("stow", "web", *map(str, dicom_data.paths[:3]), config=config)
    assert result.code == 5, result.stderr
    assert len(fake.requests) == 1  # a STOW is never retried, even on 503
    assert {(line["status"], line["message"].split(":")[0])
            for line in result.jsonl()} == {("failed", "STOW-RS of 3 files")}
    assert "HTTP 503" in result.stderr


def test_study_option_posts_to_that_study(
    tmp_path: Path, fake: FakeStow, dicom_data: Manifest
) -> None:
    study = dicom_data.instances[0].study_uid
    config = write_config(tmp_path / "c.toml", fake.profile())
    result = medimg("stow", "web", str(dicom_data.paths[0]), "--study", study, config=config)
    assert result.code == 0, result.stderr
    assert [r.path for r in fake.requests] == [f"/dicom-web/studies/{study}"]
    bad = medimg("stow", "web", str(dicom_data.paths[0]), "--study", "../x", config=config)
    assert bad.code == 2 and "not a UID" in bad.stderr


def test_dimse_only_and_dicomweb_only_options_are_usage_errors(
    tmp_path: Path, fake: FakeStow, dicom_data: Manifest
) -> None:
    config = write_config(
        tmp_path / "c.toml", fake.profile(),
        '[profiles.pacs]\ntype = "dimse"\nhost = "127.0.0.1"\nport = 1\ncalled_aet = "X"\n')
    web = medimg("stow", "web", str(dicom_data.paths[0]), "--called-aet", "X", config=config)
    assert web.code == 2 and "only for dimse profiles" in web.stderr
    dimse = medimg("stow", "pacs", str(dicom_data.paths[0]), "--batch-size", "3", config=config)
    assert dimse.code == 2 and "--batch-size: only for dicomweb profiles" in dimse.stderr
    assert fake.requests == []


# --------------------------------------------------------------------------
# Pure logic


def meta(tmp_path: Path, name: str, data: bytes) -> DicomFile:
    path = tmp_path / name
    path.write_bytes(data)
    return DicomFile(path, "1.2", f"1.2.{name}", "1.2.840.10008.1.2.1", 0, len(data))


def test_body_reads_each_file_only_when_its_part_is_sent(tmp_path: Path) -> None:
    first = meta(tmp_path, "a", b"A" * 10)
    big = meta(tmp_path, "b", bytes(range(256)) * (CHUNK * 2 // 256 + 3))
    body = MultipartBody([first, big], boundary="BOUND")
    stream = iter(body)
    assert next(stream) == b"--BOUND\r\nContent-Type: application/dicom\r\n\r\n"
    assert next(stream) == b"A" * 10
    # the second file is read only now: rewrite it (same size) and the body follows
    big.path.write_bytes(b"Z" * big.size)
    rest = list(stream)
    assert max(len(chunk) for chunk in rest) <= CHUNK  # never a whole file at once
    whole = b"--BOUND\r\nContent-Type: application/dicom\r\n\r\n" + b"A" * 10 + b"".join(rest)
    assert len(whole) == len(body)
    assert parse_multipart(whole, "BOUND") == [
        ({"content-type": "application/dicom"}, b"A" * 10),
        ({"content-type": "application/dicom"}, b"Z" * big.size)]


def test_batches_split_by_count_and_bytes(tmp_path: Path) -> None:
    files = [meta(tmp_path, str(i), b"x" * size) for i, size in enumerate((4, 4, 4, 20, 1, 1))]
    assert [[f.size for f in b] for b in batches(files, 2, 100)] == [[4, 4], [4, 20], [1, 1]]
    assert [[f.size for f in b] for b in batches(files, 10, 10)] == [[4, 4], [4], [20], [1, 1]]


def test_answer_without_body_or_mention(tmp_path: Path) -> None:
    files = [meta(tmp_path, "a", b"1"), meta(tmp_path, "b", b"2")]
    assert {r.status for r in parse_answer(files, 200, b"", 0.1)} == {"stored"}
    assert {r.status for r in parse_answer(files, 202, b"not json", 0.1)} == {"warning"}
    one = json.dumps(all_stored(["1.2.a"])[1]).encode()
    assert [r.status for r in parse_answer(files, 200, one, 0.1)] == ["stored", "warning"]


def test_orthanc_fails_instances_of_another_study_than_study_option(
    tmp_path: Path, fresh_peers: PeerPool, dicom_data: Manifest
) -> None:
    orthanc = fresh_peers.orthanc()
    config = write_config(tmp_path / "c.toml", orthanc.dicomweb_profile_toml("web"))
    first, other = dicom_data.studies[0], dicom_data.studies[1]
    mine = [i.path for i in dicom_data.instances if i.study_uid == first.study_uid]
    theirs = [i.path for i in dicom_data.instances if i.study_uid == other.study_uid]

    # all of another study: Orthanc answers 409 with a FailedSOPSequence (0x0110)
    none = medimg("stow", "web", *map(str, theirs), "--study", first.study_uid, config=config)
    assert none.code == 5, none.stderr
    assert {(line["status"], line["code"]) for line in none.jsonl()} == {("failed", 0x0110)}
    assert all(line["message"].startswith("0x0110 Failure") for line in none.jsonl())
    assert orthanc.statistics()["CountInstances"] == 0

    # mixed: 409 again, yet the study's own instances are stored and listed as such
    mixed = medimg("stow", "web", *map(str, mine + theirs), "--study", first.study_uid,
                   config=config)
    assert mixed.code == 6, mixed.stderr
    status = {line["path"]: (line["status"], line["code"]) for line in mixed.jsonl()}
    assert status == {**{str(p): ("stored", 0) for p in mine},
                      **{str(p): ("failed", 0x0110) for p in theirs}}
    assert orthanc.statistics()["CountInstances"] == len(mine)


def test_conflict_answer_trusts_its_sequences_and_fails_the_unmentioned(
    tmp_path: Path, fake: FakeStow, dicom_data: Manifest
) -> None:
    paths = dicom_data.paths[:3]
    failed, stored, unmentioned = map(uid_of, paths)
    fake.answer = lambda uids: (409, {
        "00081198": {"vr": "SQ", "Value": [seq_item(failed, **{"00081197": 0xC000})]},
        "00081199": {"vr": "SQ", "Value": [seq_item(stored)]}})
    config = write_config(tmp_path / "c.toml", fake.profile())
    result = medimg("stow", "web", *map(str, paths), config=config)
    assert result.code == 6, result.stderr
    lines = {line["sop_instance_uid"]: line for line in result.jsonl()}
    assert (lines[failed]["status"], lines[failed]["code"]) == ("failed", 0xC000)
    assert lines[failed]["message"].startswith("0xC000 Failure")
    assert (lines[stored]["status"], lines[stored]["code"]) == ("stored", 0)
    assert lines[unmentioned]["status"] == "failed"
    assert lines[unmentioned]["message"] == "STOW-RS of 3 files: HTTP 409 Conflict"
    assert len(fake.requests) == 1


def test_memory_stays_flat_while_a_large_batch_is_sent(
    tmp_path: Path, fake: FakeStow, dicom_data: Manifest
) -> None:
    """150 MB in one request: the process never holds the batch (peak RSS < 120 MB)."""
    from pydicom import dcmread

    made = []
    for n in range(3):
        ds = dcmread(dicom_data.paths[0])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{ds.SOPInstanceUID}.9{n}"
        ds.Rows, ds.Columns = 5000, 5000  # 50 MB of 16-bit pixels
        ds.PixelData = bytes([n + 1]) * (5000 * 5000 * 2)
        path = tmp_path / f"big{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        made.append(path)
        del ds
    config = write_config(tmp_path / "c.toml", fake.profile())
    probe = (
        "import resource, subprocess, sys\n"
        "code = subprocess.run(sys.argv[1:], capture_output=True).returncode\n"
        "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, *MEDIMG, "--config", str(config), "stow", "web",
         "--batch-mb", "200", *map(str, made)],
        capture_output=True, text=True, timeout=120, check=True).stdout
    code, peak_kb = map(int, out.split())
    assert code == 0
    [req] = fake.requests
    assert [data for _, data in req.parts] == [p.read_bytes() for p in made]
    assert peak_kb < 120_000, f"peak RSS {peak_kb / 1000:.0f} MB"


def test_server_not_listening_is_exit_3(tmp_path: Path, dicom_data: Manifest) -> None:
    from peers import free_port

    url = f"http://{LOOPBACK}:{free_port()}/dicom-web"
    config = write_config(tmp_path / "c.toml",
                          f'[profiles.web]\ntype = "dicomweb"\nurl = "{url}"\nauth = "none"\n')
    result = medimg("stow", "web", str(dicom_data.paths[0]), config=config)
    assert result.code == 3, result.stderr
    assert "cannot connect" in result.stderr and "Traceback" not in result.stderr


def test_file_that_shrinks_while_sent_fails_its_batch(
    tmp_path: Path, fake: FakeStow, dicom_data: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medimg_cli.config import Profile
    from medimg_cli.dicomweb import stow as stow_rs
    from medimg_cli.dicomweb.client import open_client

    path = tmp_path / "a.dcm"
    shutil.copyfile(dicom_data.paths[0], path)
    f = read_file_meta(path)
    path.write_bytes(path.read_bytes()[:-10])  # after its meta was read and checked
    monkeypatch.setattr(stow_rs, "check_file", lambda f: None)
    profile = Profile("web", "dicomweb", {"url": fake.url, "auth": "none"})
    with open_client(profile) as client:
        [result] = stow_rs.post_batch(client, [f])
    assert result.status == "failed"
    assert result.message == f"not sent: {path} changed while it was being sent"
