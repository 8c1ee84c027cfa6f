"""Secrets: the OS keyring (service `medimg`, keyed by profile), or an environment variable.

The config never holds a secret; a profile names where one comes from
(`password_env`, `token_env`, `api_key_env`). When neither the variable nor a
keyring entry exists, the error says exactly which of the two to set up.
"""

from __future__ import annotations

import os

from medimg_cli.errors import RefusedError

SERVICE = "medimg"


def keyring_get(profile: str, kind: str) -> str | None:
    """The keyring entry `PROFILE:KIND`, or None (also when no keyring backend exists)."""
    try:
        import keyring
        from keyring.errors import KeyringError
    except ImportError:  # pragma: no cover - keyring is a dependency
        return None
    try:
        value = keyring.get_password(SERVICE, f"{profile}:{kind}")
    except (KeyringError, RuntimeError):
        return None
    return str(value) if value else None


def get_secret(profile: str, kind: str, env_name: str | None, what: str) -> str:
    """A secret from the profile's environment variable, else from the keyring."""
    if env_name:
        value = os.environ.get(env_name)
        if value:
            return value
    value = keyring_get(profile, kind)
    if value:
        return value
    env_hint = f"set the environment variable {env_name}" if env_name else (
        f"name an environment variable in the profile ({kind}_env = \"VAR\") and set it")
    raise RefusedError(
        f"no {what} for profile '{profile}'",
        hint=f"run `medimg login {profile}` to store it in the keyring, or {env_hint}",
    )
