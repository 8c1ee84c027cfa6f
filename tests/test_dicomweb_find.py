"""`find` and `echo` over DICOMweb (QIDO-RS) against Orthanc's DICOMweb plugin.

The same data is in Orthanc for both protocols: a `dimse` and a `dicomweb`
profile must print the same matches (the contract scripts rely on).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Result, medimg, value, write_config
from dicom_data import Manifest
from peers import Orthanc


@pytest.fixture
def config(tmp_path: Path, orthanc: Orthanc) -> Path:
    return write_config(tmp_path / "c.toml", orthanc.profile_toml("dimse"),
                        orthanc.dicomweb_profile_toml("web"))


def run(config: Path, *args: str) -> Result:
    result = medimg(*args, config=config)
    assert result.code == 0, result.stderr
    return result


def by_uid(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: json.dumps(r, sort_keys=True))


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("--name", "DOE*"),
        ("--date", "20240101-20240131"),
        ("--modality", "MR"),
        ("--modality", "CT,MR"),
        ("--patient-id", "PAT004"),
        ("--level", "series", "--modality", "CT"),
        ("--level", "series", "--name", "DOE*"),
        ("--level", "instance", "--patient-id", "PAT003"),
        ("-k", "StudyTime=", "-k", "InstitutionName="),
    ],
)
def test_qido_and_c_find_print_the_same(config: Path, args: tuple[str, ...]) -> None:
    dimse = run(config, "find", "dimse", *args).jsonl()
    web = run(config, "find", "web", *args).jsonl()
    assert dimse, "the query should match something"
    assert by_uid(web) == by_uid(dimse)
    for fmt in ("uids", "csv"):
        a = run(config, "find", "dimse", *args, "--format", fmt).stdout.splitlines()
        b = run(config, "find", "web", *args, "--format", fmt).stdout.splitlines()
        assert sorted(a) == sorted(b)


def test_qido_series_of_one_study_uses_the_study_path(config: Path,
                                                     dicom_data: Manifest) -> None:
    study = dicom_data.studies[0]
    records = run(config, "find", "web", "--level", "series", "--study-uid", study.study_uid,
                  ).jsonl()
    assert {value(r, "0020000E") for r in records} == {
        s.series_uid for s in dicom_data.series_of(study.study_uid)}


def test_qido_limit(config: Path) -> None:
    assert len(run(config, "find", "web", "--limit", "3").jsonl()) == 3


def test_dicomweb_echo(config: Path, orthanc: Orthanc) -> None:
    result = run(config, "echo", "web", "--count", "2", "--interval", "0")
    echoes = result.jsonl()
    assert [e["status"] for e in echoes] == [200, 200]
    assert echoes[0]["url"] == orthanc.dicomweb_url.rstrip("/")


def test_unreachable_dicomweb_server_is_exit_3(tmp_path: Path) -> None:
    from peers import free_port

    config = write_config(tmp_path / "c.toml",
                          f'[profiles.web]\ntype = "dicomweb"\nurl = "http://127.0.0.1:{free_port()}"\n')
    result = medimg("echo", "web", "--timeout", "2", config=config)
    assert result.code == 3, result.stderr
    assert "cannot connect" in result.stderr


@pytest.fixture(scope="module")
def orthanc_with_users(tmp_path_factory: pytest.TempPathFactory, dicom_data: Manifest
                       ) -> Any:
    orthanc = Orthanc.start(
        tmp_path_factory.mktemp("auth-orthanc"),
        extra_config={"AuthenticationEnabled": True,
                      "RegisteredUsers": {"svc-medimg": "s3cret-pw"}},
    )
    orthanc.load(dicom_data.paths[:3])
    yield orthanc
    orthanc.stop(graceful=False)


def test_basic_auth_against_real_server(tmp_path: Path, orthanc_with_users: Orthanc) -> None:
    profile = orthanc_with_users.dicomweb_profile_toml(
        "web", auth="basic", username="svc-medimg", password_env="WEB_PW")
    config = write_config(tmp_path / "c.toml", profile)
    good = medimg("-vv", "find", "web", config=config, env={"WEB_PW": "s3cret-pw"})
    assert good.code == 0, good.stderr
    assert good.jsonl()
    assert "s3cret-pw" not in good.stderr + good.stdout
    assert "Authorization" not in good.stderr or "<redacted>" in good.stderr
    bad = medimg("find", "web", config=config, env={"WEB_PW": "wrong"})
    assert bad.code == 4, bad.stderr
    assert "HTTP 401" in bad.stderr
    missing = medimg("find", "web", config=config)
    assert missing.code == 4
    assert "no password for profile 'web'" in missing.stderr and "WEB_PW" in missing.stderr
