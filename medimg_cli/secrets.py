"""Secrets: the OS keyring (service `medimg`, keyed by profile), or an environment variable.

The config never holds a secret; a profile names where one comes from
(`password_env`, `token_env`, `api_key_env`, `oauth.client_secret_env`).
Keyring entries are `PROFILE:KIND` under service `medimg` (`password`,
`token`, `api_key`, `client_secret`, and `oauth` for the OAuth token set).

When neither the variable nor a keyring entry exists, the error says exactly
which of the two to set up; when the host has no keyring backend at all
(headless servers), it says that, names the `*_env` fallback and a backend to
install (exit 4). Keyring failures never become tracebacks, and nothing here
writes a secret anywhere but the keyring.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from medimg_cli.errors import RefusedError

SERVICE = "medimg"
KINDS = ("password", "token", "api_key", "client_secret", "oauth")
BACKEND_HINT = "a keyring backend such as the Secret Service (gnome-keyring, KWallet)"

log = logging.getLogger("medimg.secrets")


class NoKeyringBackend(RefusedError):
    """The host has no usable keyring backend (typical on headless servers)."""


def _username(profile: str, kind: str) -> str:
    return f"{profile}:{kind}"


def _keyring() -> Any:
    """The keyring module, or NoKeyringBackend when no backend is usable."""
    try:
        import keyring
        from keyring.backends import fail
    except ImportError:  # pragma: no cover - keyring is a dependency
        raise NoKeyringBackend("the Python package keyring is not installed") from None
    try:
        backend = keyring.get_keyring()
    except Exception as exc:  # a broken keyring config file, an unimportable backend
        raise NoKeyringBackend(f"the keyring backend cannot be loaded ({type(exc).__name__})",
                               hint=f"install {BACKEND_HINT}") from None
    if isinstance(backend, fail.Keyring):
        raise NoKeyringBackend("no keyring backend is available on this host",
                               hint=f"install {BACKEND_HINT}")
    return keyring


def _keyring_failure(action: str, exc: Exception) -> RefusedError:
    # Keyring error messages describe the backend, never the secret.
    from keyring.errors import NoKeyringError

    if isinstance(exc, NoKeyringError):
        return NoKeyringBackend("no keyring backend is available on this host",
                                hint=f"install {BACKEND_HINT}")
    detail = str(exc).splitlines()[0][:200] if str(exc) else ""
    return RefusedError(
        f"the keyring refused to {action}: {type(exc).__name__}"
        + (f": {detail}" if detail else ""),
        hint="unlock the keyring (Secret Service: gnome-keyring) and try again",
    )


def keyring_available() -> bool:
    """Whether a usable keyring backend exists."""
    try:
        _keyring()
    except NoKeyringBackend:
        return False
    return True


def keyring_read(profile: str, kind: str) -> str | None:
    """The keyring entry `PROFILE:KIND`, or None; raise when the keyring is missing or fails."""
    keyring = _keyring()
    try:
        value = keyring.get_password(SERVICE, _username(profile, kind))
    except Exception as exc:
        raise _keyring_failure("read a secret", exc) from None
    return str(value) if value else None


def keyring_get(profile: str, kind: str) -> str | None:
    """The keyring entry `PROFILE:KIND`, or None (also when no keyring backend exists)."""
    try:
        return keyring_read(profile, kind)
    except RefusedError:
        return None


def keyring_set(profile: str, kind: str, value: str, what: str) -> None:
    """Store a secret in the keyring; never falls back to a file."""
    try:
        keyring = _keyring()
    except NoKeyringBackend as exc:
        raise NoKeyringBackend(
            f"cannot store the {what} of profile '{profile}': {exc.message}",
            hint=f"install {BACKEND_HINT}, or name an environment variable in the profile "
            "(password_env / token_env / api_key_env / oauth.client_secret_env) and put the "
            "secret there; medimg never writes secrets to a plain file",
        ) from None
    try:
        keyring.set_password(SERVICE, _username(profile, kind), value)
    except Exception as exc:
        raise _keyring_failure("store a secret", exc) from None
    log.debug("stored the %s of profile '%s' in the keyring", what, profile)


def keyring_delete(profile: str, kind: str) -> bool:
    """Remove `PROFILE:KIND` from the keyring; True when there was one."""
    keyring = _keyring()
    from keyring.errors import PasswordDeleteError

    try:
        if keyring.get_password(SERVICE, _username(profile, kind)) is None:
            return False
        keyring.delete_password(SERVICE, _username(profile, kind))
    except PasswordDeleteError:
        return False
    except Exception as exc:
        raise _keyring_failure("delete a secret", exc) from None
    return True


def get_secret(profile: str, kind: str, env_name: str | None, what: str) -> str:
    """A secret from the profile's environment variable, else from the keyring."""
    if env_name:
        value = os.environ.get(env_name)
        if value:
            return value
    env_key = {"api_key": "api_key_env", "client_secret": "oauth.client_secret_env"}.get(
        kind, f"{kind}_env")
    try:
        value = keyring_read(profile, kind)
    except NoKeyringBackend as exc:
        where = (f"the environment variable {env_name} is not set" if env_name
                 else f"the profile names no environment variable ({env_key})")
        set_env = (f"set {env_name}" if env_name
                   else f"add {env_key} = \"VAR\" to the profile and set that variable")
        raise NoKeyringBackend(
            f"no {what} for profile '{profile}': {where} and {exc.message}",
            hint=f"{set_env} (password_env / token_env for headless hosts), or install "
            f"{BACKEND_HINT} and run `medimg login {profile}`",
        ) from None
    if value:
        return value
    env_hint = f"set the environment variable {env_name}" if env_name else (
        f"name an environment variable in the profile ({env_key} = \"VAR\") and set it")
    raise RefusedError(
        f"no {what} for profile '{profile}'",
        hint=f"run `medimg login {profile}` to store it in the keyring, or {env_hint}",
    )
