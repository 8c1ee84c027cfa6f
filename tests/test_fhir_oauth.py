"""`fhir` commands with `auth = "oauth"`: a real token from the test OAuth provider.

oidc-provider (tests/oauth_peer.py) signs access tokens for a resource with an
HS256 secret; a sekmet-fhir started with that secret as its `jwt_secret`
accepts them. medimg gets the token itself (client credentials, the client
secret from the environment) and sends it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import medimg, write_config
from dicom_data import Manifest
from fhir_peer import FhirServer, start_loaded
from oauth_peer import NO_KEYRING_ENV, OAuthServer


@pytest.fixture(scope="module")
def oauth_fhir(tmp_path_factory: pytest.TempPathFactory, oauth_server: OAuthServer,
               dicom_data: Manifest) -> Iterator[FhirServer]:
    """sekmet-fhir trusting the OAuth provider's access tokens."""
    server = start_loaded(tmp_path_factory.mktemp("fhir-oauth"), dicom_data,
                          secret=oauth_server.jwt_secret)
    try:
        yield server
    finally:
        server.stop()


def test_fhir_patient_with_a_client_credentials_token_from_the_provider(
    tmp_path: Path, oauth_server: OAuthServer, oauth_fhir: FhirServer
) -> None:
    config = write_config(tmp_path / "c.toml", oauth_server.profile_toml(
        "ehr", url=oauth_fhir.url, scope="system/*.read"))
    result = medimg("-vv", "fhir", "patient", "ehr", "--family", "Müller", config=config,
                    env={**oauth_server.client_env(), **NO_KEYRING_ENV})
    assert result.code == 0, result.stderr
    (patient,) = result.jsonl()
    assert patient["id"] == "pat004" and patient["name"][0]["given"] == ["Jürgen"]
    assert oauth_server.token_url in result.stderr  # -vv: medimg asked the provider itself
    for secret in oauth_server.secrets:
        assert secret not in result.stdout + result.stderr
