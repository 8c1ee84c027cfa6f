"""`--trace FILE` and redaction: traces and -vv logs of real exchanges carry no PHI
(unless --no-redact) and never a secret, but do carry the protocol."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cli_helpers import medimg, write_config
from dicom_data import Manifest
from peers import Orthanc, Peer, PeerPool

from medimg_cli.trace import Redactor

TOKEN = "tok-SECRET-4711"


def phi_values(dicom_data: Manifest) -> list[str]:
    """Patient names (each component group) and IDs of the test data."""
    values: list[str] = []
    for p in dicom_data.patients:
        values.append(p.patient_id)
        values += [part for part in p.name.split("=") if len(part.strip("^")) >= 3]
    return values


def leaked(text: str, values: list[str]) -> list[str]:
    return [v for v in values if v in text]


@pytest.fixture
def config(tmp_path: Path, pacs: Peer, medimg_receive_port: int) -> Path:
    return write_config(
        tmp_path / "c.toml", pacs.profile_toml("pacs"),
        defaults=f'calling_aet = "MEDIMG"\nreceive_port = {medimg_receive_port}\n',
    )


# --------------------------------------------------------------------------
# DIMSE against the session peers (Orthanc and dcmqrscp)


def test_find_trace_has_the_exchange_and_no_phi(tmp_path: Path, config: Path,
                                                 dicom_data: Manifest) -> None:
    trace = tmp_path / "find.trace"
    result = medimg("--trace", str(trace), "find", "pacs", config=config)
    assert result.code == 0, result.stderr
    assert len(result.jsonl()) == len(dicom_data.studies)  # the output itself is untouched
    text = trace.read_text()
    for fragment in ("A-ASSOCIATE-RQ", "A-ASSOCIATE-AC", "calling AE title: MEDIMG",
                     "C-FIND-RQ", "C-FIND-RSP", "(0000,0900) US Status", "identifier:",
                     "(0010,0010) PN PatientName = <PHI:", "A-RELEASE-RQ", "A-RELEASE-RP"):
        assert fragment in text, fragment
    assert text.count("C-FIND-RSP") == len(dicom_data.studies) + 1  # pending ones + final
    assert leaked(text, phi_values(dicom_data)) == []
    assert re.search(r"^\d\d:\d\d:\d\d\.\d{6} ", text, re.MULTILINE)  # timestamps


def test_find_trace_hashes_a_value_the_same_way_throughout(
    tmp_path: Path, config: Path, dicom_data: Manifest
) -> None:
    trace = tmp_path / "find.trace"
    result = medimg("--trace", str(trace), "find", "pacs", "--patient-id", "PAT003",
                    config=config)
    assert result.code == 0, result.stderr
    hashes = re.findall(r"PatientID = (<PHI:[0-9a-f]{6}>)", trace.read_text())
    # the query's PatientID and every answer's: the same value, so the same hash
    assert len(hashes) == 1 + len(dicom_data.studies_of("PAT003"))
    assert len(set(hashes)) == 1


def test_find_trace_with_no_redact_keeps_patient_data(
    tmp_path: Path, config: Path, dicom_data: Manifest
) -> None:
    trace = tmp_path / "find.trace"
    result = medimg("--trace", str(trace), "--no-redact", "find", "pacs", config=config)
    assert result.code == 0, result.stderr
    text = trace.read_text()
    assert "<PHI:" not in text
    for patient in dicom_data.patients:
        assert f"PatientID = {patient.patient_id}" in text
    assert "PHI NOT redacted" in text.splitlines()[0]


def test_move_trace_has_the_exchange_and_no_phi(tmp_path: Path, config: Path,
                                                 dicom_data: Manifest) -> None:
    study = dicom_data.studies[0]
    trace = tmp_path / "move.trace"
    result = medimg("--trace", str(trace), "move", "pacs", study.study_uid,
                    "--out", str(tmp_path / "out"), config=config)
    assert result.code == 0, result.stderr
    text = trace.read_text()
    for fragment in ("C-MOVE-RQ", "C-MOVE-RSP", "MoveDestination = MEDIMG",
                     "C-STORE-RQ", "C-STORE-RSP", "data set:", "A-ASSOCIATE-RQ"):
        assert fragment in text, fragment
    assert leaked(text, phi_values(dicom_data)) == []
    received = len(list((tmp_path / "out").rglob("*.dcm")))
    assert received == len(dicom_data.instances_of_study(study.study_uid))


def test_stow_trace_covers_the_fast_c_store_exchange(
    tmp_path: Path, fresh_peers: PeerPool, dicom_data: Manifest
) -> None:
    peer = fresh_peers.storescp()
    config = write_config(tmp_path / "c.toml", peer.profile_toml("pacs"))
    trace = tmp_path / "stow.trace"
    files = [str(i.path) for i in dicom_data.instances[:3]]
    result = medimg("--trace", str(trace), "stow", "pacs", *files, config=config)
    assert result.code == 0, result.stderr
    text = trace.read_text()
    assert text.count("C-STORE-RQ") == 3 and text.count("C-STORE-RSP") == 3
    assert "(0000,0900) US Status = 0x0000" in text
    for instance in dicom_data.instances[:3]:
        assert instance.sop_instance_uid in text


def test_failed_association_ends_the_trace_with_the_error(tmp_path: Path,
                                                           dcmqrscp: Peer) -> None:
    config = write_config(tmp_path / "c.toml", dcmqrscp.profile_toml("pacs",
                                                                     called_aet="NOPE"))
    trace = tmp_path / "e.trace"
    result = medimg("--trace", str(trace), "echo", "pacs", config=config)
    assert result.code == 4
    text = trace.read_text()
    assert "A-ASSOCIATE-RJ" in text and "called AE title: NOPE" in text
    assert "ERROR medimg: association rejected" in text


# --------------------------------------------------------------------------
# HTTP (QIDO-RS) against Orthanc's DICOMweb plugin


@pytest.fixture
def web_config(tmp_path: Path, orthanc: Orthanc) -> Path:
    profile = orthanc.dicomweb_profile_toml("web", auth="bearer", token_env="WEB_TOKEN")
    return write_config(tmp_path / "w.toml", profile)


def test_qido_trace_hides_phi_in_url_and_body_and_always_the_token(
    tmp_path: Path, web_config: Path, dicom_data: Manifest
) -> None:
    patient = dicom_data.patient("PAT003")
    trace = tmp_path / "qido.trace"
    result = medimg("--trace", str(trace), "find", "web", "--name", patient.name,
                    config=web_config, env={"WEB_TOKEN": TOKEN})
    assert result.code == 0, result.stderr
    assert result.jsonl()
    text = trace.read_text()
    assert "> GET http://" in text and "< 200 OK for GET" in text
    assert re.search(r"PatientName=<PHI:[0-9a-f]{6}>", text)
    assert "authorization: <secret>" in text.lower()
    assert "< body of GET" in text and '"00100020"' in text  # the JSON answer, redacted
    assert TOKEN not in text
    assert leaked(text, phi_values(dicom_data)) == []

    plain = tmp_path / "plain.trace"
    result = medimg("--trace", str(plain), "--no-redact", "find", "web", "--name",
                    patient.name, config=web_config, env={"WEB_TOKEN": TOKEN})
    assert result.code == 0, result.stderr
    text = plain.read_text()
    assert patient.patient_id in text and TOKEN not in text


def test_vv_log_of_a_qido_find_has_no_phi_and_no_token(
    web_config: Path, dicom_data: Manifest
) -> None:
    patient = dicom_data.patient("PAT003")
    result = medimg("-vv", "find", "web", "--name", patient.name, "--patient-id",
                    patient.patient_id, config=web_config, env={"WEB_TOKEN": TOKEN})
    assert result.code == 0, result.stderr
    assert "GET" in result.stderr
    assert leaked(result.stderr, phi_values(dicom_data)) == []
    assert TOKEN not in result.stderr
    assert patient.patient_id in result.stdout  # the answer itself is the user's

    kept = medimg("-vv", "--no-redact", "find", "web", "--patient-id", patient.patient_id,
                  config=web_config, env={"WEB_TOKEN": TOKEN})
    assert kept.code == 0, kept.stderr
    assert patient.patient_id in kept.stderr and TOKEN not in kept.stderr


def test_trace_file_that_cannot_be_written_is_a_usage_error(tmp_path: Path,
                                                              web_config: Path) -> None:
    result = medimg("--trace", str(tmp_path / "no" / "such" / "dir" / "t"), "find", "web",
                    config=web_config)
    assert result.code == 2
    assert "--trace" in result.stderr and "cannot write there" in result.stderr


# --------------------------------------------------------------------------
# The redactor itself


def test_hashes_are_stable_within_a_trace_and_differ_across_traces() -> None:
    one, two = Redactor(), Redactor()
    assert one.phi("DOE^JOHN") == one.phi("DOE^JOHN") != one.phi("DOE^JANE")
    assert one.phi("DOE^JOHN") != two.phi("DOE^JOHN")
    assert Redactor(redact=False).phi("DOE^JOHN") == "DOE^JOHN"
    assert one.phi("*") == "*" and one.phi("") == ""  # wildcards say nothing


def test_secrets_are_hidden_even_without_redaction() -> None:
    r = Redactor(redact=False)
    url = r.url("https://user:pw@pacs/wado?access_token=abc&PatientID=P1&api_key=k")
    assert url == "https://<secret>@pacs/wado?access_token=<secret>&PatientID=P1&api_key=<secret>"
    assert r.headers([("Authorization", "Bearer x"), ("X-Api-Key", "k"), ("Accept", "a")]) == [
        ("Authorization", "<secret>"), ("X-Api-Key", "<secret>"), ("Accept", "a")]
    assert r.form("grant_type=refresh_token&refresh_token=r1&client_secret=s") == (
        "grant_type=refresh_token&refresh_token=<secret>&client_secret=<secret>")
    assert r.json_text('{"access_token": "a.b.c", "expires_in": 60}') == (
        '{"access_token": "<secret>", "expires_in": 60}')
    assert "hunter2" not in r.text("login failed: password=hunter2")


def test_oauth_metadata_stays_readable_and_its_secrets_do_not() -> None:
    r = Redactor(redact=False)
    metadata = r.json_text('{"token_endpoint": "https://as/token", "token_endpoint_auth_'
                           'methods_supported": ["private_key_jwt"], "token_type": "Bearer", '
                           '"refresh_token": "r1", "id_token": "h.b.s", "device_code": "d1"}')
    assert '"token_endpoint": "https://as/token"' in metadata
    assert '["private_key_jwt"]' in metadata and '"token_type": "Bearer"' in metadata
    assert "r1" not in metadata and "h.b.s" not in metadata and "d1" not in metadata
    form = r.form("client_assertion_type=urn:x&client_assertion=a.b.c&code=c1&"
                  "code_verifier=v1&password=p1&token=t1&token_type_hint=refresh_token")
    assert form == ("client_assertion_type=urn:x&client_assertion=<secret>&code=<secret>&"
                    "code_verifier=<secret>&password=<secret>&token=<secret>&"
                    "token_type_hint=refresh_token")


def test_fhir_search_parameters_and_patient_reads_are_phi_in_urls() -> None:
    r = Redactor()
    url = r.url("https://ehr/fhir/Patient?name:exact=M%C3%BCller&birthdate=1960-06-15"
                "&gender=male&_count=10")
    assert "ller" not in url and "1960" not in url
    assert "name:exact=<PHI:" in url and "gender=male&_count=10" in url
    read = r.url("https://ehr/fhir/Patient/PAT005/$everything?subject:Patient.identifier=x1")
    assert "PAT005" not in read and "x1" not in read and read.endswith(
        "/$everything?subject:Patient.identifier=" + r.phi("x1"))
    assert Redactor(redact=False).url("https://ehr/fhir/Patient/PAT005") == (
        "https://ehr/fhir/Patient/PAT005")


def test_json_redaction_works_on_a_cut_off_body() -> None:
    r = Redactor()
    body = ('[{"00100010":{"vr":"PN","Value":[{"Alphabetic":"DOE^JOHN"}]},'
            '"0020000D":{"vr":"UI","Value":["1.2.3"]}},{"00100020":{"vr":"LO","Value":["PA')
    text = r.json_text(body)
    assert "DOE^JOHN" not in text and '"PA' not in text
    assert '"vr":"PN"' in text and '"1.2.3"' in text
    fhir = r.json_text('{"resourceType":"Patient","name":[{"family":"Doe","given":["John"]}],'
                       '"gender":"male","birthDate":"1970-01-01"}')
    assert "Doe" not in fhir and "John" not in fhir and "1970-01-01" not in fhir
    assert '"gender":"male"' in fhir and '"resourceType":"Patient"' in fhir


def test_parallel_stow_workers_write_into_the_same_trace(
    tmp_path: Path, fresh_peers: PeerPool, dicom_data: Manifest
) -> None:
    peer = fresh_peers.storescp(extra_args=["--fork"])
    config = write_config(tmp_path / "c.toml", peer.profile_toml("pacs"))
    trace = tmp_path / "stow.trace"
    result = medimg("--trace", str(trace), "stow", "pacs", str(dicom_data.root),
                    "--parallel", "2", config=config)
    assert result.code == 0, result.stderr
    text = trace.read_text()
    assert text.count("A-ASSOCIATE-RQ") == 2
    assert text.count("C-STORE-RSP") == len(dicom_data.instances)
    assert text.count("# medimg") == 1  # the workers appended; none started a new trace


def test_wadoget_trace_describes_the_multipart_answer_without_its_content(
    tmp_path: Path, web_config: Path, dicom_data: Manifest
) -> None:
    study = dicom_data.studies[0]
    trace = tmp_path / "wado.trace"
    out = tmp_path / "out"
    result = medimg("--trace", str(trace), "wadoget", "web", study.study_uid, "--out",
                    str(out), config=web_config, env={"WEB_TOKEN": TOKEN})
    assert result.code == 0, result.stderr
    assert len(list(out.rglob("*.dcm"))) == len(dicom_data.instances_of_study(study.study_uid))
    text = trace.read_text()
    assert f"/studies/{study.study_uid}" in text
    assert "<body: multipart/related" in text and "not traced>" in text
    assert TOKEN not in text
    assert leaked(text, phi_values(dicom_data)) == []


def test_vv_log_of_a_dimse_find_has_no_phi(config: Path, dicom_data: Manifest) -> None:
    result = medimg("-vv", "find", "pacs", "--patient-id", "PAT003", config=config)
    assert result.code == 0, result.stderr
    assert "A-ASSOCIATE" in result.stderr or "Association" in result.stderr
    assert leaked(result.stderr, phi_values(dicom_data)) == []
    assert "PAT003" in result.stdout
