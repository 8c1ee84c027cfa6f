"""Profiles: find the config file, load it, validate it, and save it.

Every error names the file, the profile and the key, what was expected and
what was found. Secrets never live here: a key that holds one is refused with
the way to store it properly (keyring via `medimg login`, or an `*_env` key
naming an environment variable).
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medimg_cli.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

ENV_CONFIG = "MEDIMG_CONFIG"
PROFILE_TYPES = ("dimse", "dicomweb", "fhir")
AUTH_KINDS = ("none", "basic", "bearer", "api-key", "oauth")
OAUTH_FLOWS = ("authorization-code", "device", "client-credentials", "backend-services")
VENDORS = (
    "generic",
    "ge-centricity",
    "philips-intellispace",
    "siemens-syngo",
    "fujifilm-synapse",
    "sectra-ids7",
    "epic",
    "cerner",
    "allscripts",
    "meditech",
)
# Short names people use for the same presets.
VENDOR_ALIASES = {
    "ge": "ge-centricity",
    "philips": "philips-intellispace",
    "siemens": "siemens-syngo",
    "fujifilm": "fujifilm-synapse",
    "sectra": "sectra-ids7",
}
# Keys that would hold a secret. Anywhere in the file they are refused.
SECRET_KEYS = frozenset(
    {
        "password",
        "passwd",
        "passcode",
        "api_key",
        "apikey",
        "token",
        "access_token",
        "refresh_token",
        "client_secret",
        "secret",
        "private_key_password",
    }
)
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def default_config_path() -> Path:
    """The per-user config file: platformdirs' user config dir + config.toml."""
    import platformdirs

    return Path(platformdirs.user_config_dir("medimg")) / "config.toml"


def resolve_config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """`--config PATH`, then `$MEDIMG_CONFIG`, then the per-user default."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env).expanduser()
    return default_config_path()


# --------------------------------------------------------------------------
# Validators: each takes the raw value and returns the clean one, or raises
# ValueError with what was expected.

Validator = Callable[[Any], Any]


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a string")
    return value


def _nonempty(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("a non-empty string")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError("a port number from 1 to 65535")
    return value


def _receive_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError("a port number from 0 (any free port) to 65535")
    return value


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError("a number of seconds greater than 0")
    return float(value)


def _pdu(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("a PDU size in bytes (0 = unlimited)")
    return value


def ae_title(value: Any) -> str:
    """Validate a DICOM AE title (PS3.5: 1-16 characters, no backslash or control)."""
    if not isinstance(value, str):
        raise ValueError("an AE title (1 to 16 characters)")
    stripped = value.strip()
    if not stripped or len(value) > 16:
        raise ValueError("an AE title of 1 to 16 characters")
    if "\\" in value or any(ord(c) < 32 or ord(c) > 126 for c in value):
        raise ValueError("an AE title of printable ASCII without backslash")
    return stripped


def _url(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"^https?://[^\s/]+", value):
        raise ValueError("an http:// or https:// URL")
    return value.rstrip("/")


def _choice(*choices: str, aliases: Mapping[str, str] | None = None) -> Validator:
    def check(value: Any) -> str:
        if isinstance(value, str):
            name = (aliases or {}).get(value, value)
            if name in choices:
                return name
        raise ValueError("one of " + ", ".join(choices))

    return check


def _env_name(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value):
        raise ValueError("the name of an environment variable, e.g. \"PACS_PASSWORD\"")
    return value


def _tls_version(value: Any) -> str:
    # `tls_min_version = 1.2` (a TOML number) is as likely as "1.2".
    text = str(value) if isinstance(value, float) else value  # 1.25 is not 1.2
    if text not in ("1.2", "1.3"):
        raise ValueError('a TLS version: "1.2" or "1.3"')
    return str(text)


def _scopes(value: Any) -> str:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value)
    return _nonempty(value)


_DEFAULTS_KEYS: dict[str, Validator] = {
    "calling_aet": ae_title,
    "receive_port": _receive_port,
    "output_dir": _nonempty,
    "timeout": _positive_number,
}

_COMMON_KEYS: dict[str, Validator] = {
    "type": _choice(*PROFILE_TYPES),
    "vendor": _choice(*VENDORS, aliases=VENDOR_ALIASES),
    "description": _string,
    "timeout": _positive_number,
}

_TLS_KEYS: dict[str, Validator] = {
    "ca_file": _nonempty,
    "cert_file": _nonempty,
    "key_file": _nonempty,
}

_HTTP_KEYS: dict[str, Validator] = {
    "url": _url,
    "auth": _choice(*AUTH_KINDS),
    "username": _nonempty,
    "password_env": _env_name,
    "token_env": _env_name,
    "api_key_env": _env_name,
    "api_key_header": _nonempty,
    "verify": _bool,
    **_TLS_KEYS,
}

_OAUTH_KEYS: dict[str, Validator] = {
    "flow": _choice(*OAUTH_FLOWS),
    "client_id": _nonempty,
    "client_secret_env": _env_name,
    "client_auth": _choice("client_secret_basic", "client_secret_post"),
    "scope": _scopes,
    "token_url": _url,
    "authorize_url": _url,
    "device_url": _url,
    "revoke_url": _url,
    "issuer": _url,
    "audience": _nonempty,
    "private_key_file": _nonempty,
    "key_id": _nonempty,
    "alg": _choice("RS384", "ES384"),
    "redirect_port": _receive_port,
}

_PROFILE_KEYS: dict[str, dict[str, Validator]] = {
    "dimse": {
        **_COMMON_KEYS,
        "host": _nonempty,
        "port": _port,
        "called_aet": ae_title,
        "calling_aet": ae_title,
        "receive_port": _receive_port,
        "output_dir": _nonempty,
        "max_pdu": _pdu,
        "tls": _bool,
        "tls_verify": _bool,
        "tls_min_version": _tls_version,
        "receive_tls": _bool,
        # A-ASSOCIATE User Identity (dimse/user_identity.py); the passcode or token
        # comes from the keyring or the variable these *_env keys name.
        "user_identity": _choice("username", "username-passcode", "jwt", "saml"),
        "username": _nonempty,
        "passcode_env": _env_name,
        "password_env": _env_name,
        "identity_token_env": _env_name,
        "identity_file": _nonempty,
        "identity_response": _bool,
        **_TLS_KEYS,
    },
    "dicomweb": {**_COMMON_KEYS, **_HTTP_KEYS, "output_dir": _nonempty},
    "fhir": {**_COMMON_KEYS, **_HTTP_KEYS},
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "dimse": ("host", "called_aet"),
    "dicomweb": ("url",),
    "fhir": ("url",),
}


@dataclass(frozen=True)
class Defaults:
    """The `[defaults]` table, with built-in values for what it leaves out."""

    calling_aet: str = "MEDIMG"
    receive_port: int = 11113
    output_dir: str = "~/medimg"
    timeout: float = 30.0


@dataclass(frozen=True)
class Profile:
    """One validated `[profiles.NAME]` table."""

    name: str
    type: str
    values: Mapping[str, Any]
    defaults: Defaults = field(default_factory=Defaults)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    @property
    def timeout(self) -> float:
        return float(self.values.get("timeout", self.defaults.timeout))

    @property
    def calling_aet(self) -> str:
        return str(self.values.get("calling_aet", self.defaults.calling_aet))

    @property
    def receive_port(self) -> int:
        return int(self.values.get("receive_port", self.defaults.receive_port))

    @property
    def output_dir(self) -> str:
        return str(self.values.get("output_dir", self.defaults.output_dir))

    @property
    def host(self) -> str:
        return str(self.values["host"])

    @property
    def port(self) -> int:
        return int(self.values.get("port", 104))

    @property
    def called_aet(self) -> str:
        return str(self.values["called_aet"])

    @property
    def endpoint(self) -> str:
        """A one-line description of where the profile points."""
        if self.type == "dimse":
            return f"{self.called_aet}@{self.host}:{self.port}"
        return str(self.values["url"])

    def effective(self) -> dict[str, Any]:
        """The profile's settings with defaults filled in, for `config show`."""
        out: dict[str, Any] = {"type": self.type}
        if self.type == "dimse":
            out.update(
                host=self.host,
                port=self.port,
                called_aet=self.called_aet,
                calling_aet=self.calling_aet,
                receive_port=self.receive_port,
                output_dir=self.output_dir,
            )
        out["timeout"] = self.timeout
        for key, value in self.values.items():
            out.setdefault(key, value)
        return out


@dataclass(frozen=True)
class Config:
    """A loaded config file (or the empty config when the file does not exist)."""

    path: Path
    exists: bool
    defaults: Defaults
    profiles: Mapping[str, Profile]

    def profile(self, name: str) -> Profile:
        """The named profile, or a ConfigError that lists the known ones."""
        try:
            return self.profiles[name]
        except KeyError:
            pass
        if not self.exists:
            raise ConfigError(
                f"unknown profile '{name}': no config file at {self.path}",
                hint="run `medimg config init` to write a starter config, "
                "or point --config / $MEDIMG_CONFIG at yours",
            )
        known = ", ".join(sorted(self.profiles)) or "none"
        close = difflib.get_close_matches(name, list(self.profiles), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(
            f"unknown profile '{name}' in {self.path} (known: {known})",
            hint=hint + "`medimg profiles` lists them",
        )


def _where(path: Path, table: str, key: str | None = None) -> str:
    return f"{path}: [{table}]" + (f" {key}" if key else "")


def _refuse_secret(path: Path, table: str, key: str, profile: str | None) -> None:
    target = f"medimg login {profile}" if profile else "medimg login PROFILE"
    raise ConfigError(
        f"{_where(path, table, key)}: secrets are not kept in the config file",
        hint=f"remove `{key}`; store it in the keyring with `{target}`, or set "
        f'`{key}_env = "VARIABLE"` and put the secret in that environment variable',
    )


def _check_table(
    path: Path,
    table: str,
    raw: Mapping[str, Any],
    schema: Mapping[str, Validator],
    profile: str | None,
    nested: Mapping[str, Mapping[str, Validator]] | None = None,
) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SECRET_KEYS:
            _refuse_secret(path, table, key, profile)
        if nested and key in nested:
            if not isinstance(value, dict):
                raise ConfigError(f"{_where(path, table, key)}: expected a table, found {value!r}")
            clean[key] = _check_table(path, f"{table}.{key}", value, nested[key], profile)
            continue
        validator = schema.get(key)
        if validator is None:
            allowed = sorted([*schema, *(nested or {})])
            close = difflib.get_close_matches(key, allowed, n=1)
            raise ConfigError(
                f"{_where(path, table, key)}: unknown key",
                hint=(f"did you mean '{close[0]}'? " if close else "")
                + "allowed here: "
                + ", ".join(allowed),
            )
        try:
            clean[key] = validator(value)
        except ValueError as exc:
            raise ConfigError(
                f"{_where(path, table, key)}: expected {exc}, found {value!r}"
            ) from None
    return clean


def parse_config(text: str, path: Path) -> Config:
    """Validate the TOML text of a config file."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{path}: invalid TOML: {exc}", hint="fix the line named, or `medimg config validate`"
        ) from None
    unknown = sorted(set(data) - {"defaults", "profiles"})
    for key in unknown:
        if key in SECRET_KEYS:
            _refuse_secret(path, "top level", key, None)
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level table or key '{unknown[0]}'",
            hint="a config has only [defaults] and [profiles.NAME] tables",
        )
    raw_defaults = data.get("defaults", {})
    if not isinstance(raw_defaults, dict):
        raise ConfigError(f"{path}: 'defaults' must be a table")
    defaults = Defaults(**_check_table(path, "defaults", raw_defaults, _DEFAULTS_KEYS, None))

    raw_profiles = data.get("profiles", {})
    if not isinstance(raw_profiles, dict):
        raise ConfigError(f"{path}: 'profiles' must be a table of [profiles.NAME] tables")
    profiles: dict[str, Profile] = {}
    for name, raw in raw_profiles.items():
        table = f"profiles.{name}"
        if not _PROFILE_NAME.match(name):
            raise ConfigError(
                f"{path}: [{table}]: profile names use letters, digits, '.', '_' and '-'"
            )
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: [{table}]: expected a table, found {raw!r}")
        kind = raw.get("type")
        if kind not in PROFILE_TYPES:
            found = "nothing" if kind is None else repr(kind)
            raise ConfigError(
                f"{_where(path, table, 'type')}: expected one of {', '.join(PROFILE_TYPES)}, "
                f"found {found}"
            )
        nested = {"oauth": _OAUTH_KEYS} if kind in ("dicomweb", "fhir") else None
        values = _check_table(path, table, raw, _PROFILE_KEYS[kind], name, nested)
        from medimg_cli.presets import apply_defaults

        values = apply_defaults(kind, values)  # vendor preset: keys the profile leaves out
        for key in _REQUIRED[kind]:
            if key not in values:
                raise ConfigError(
                    f"{_where(path, table, key)}: missing (a {kind} profile needs "
                    + ", ".join(_REQUIRED[kind])
                    + ")"
                )
        if values.get("user_identity") in ("username", "username-passcode") and (
                "username" not in values):
            raise ConfigError(
                f"{_where(path, table, 'username')}: missing (user_identity = "
                f"\"{values['user_identity']}\" needs a username)")
        if values.get("auth") == "oauth" and "oauth" not in values:
            raise ConfigError(
                f"{_where(path, table, 'oauth')}: missing (auth = \"oauth\" needs oauth.flow "
                "and oauth.client_id)"
            )
        profiles[name] = Profile(name=name, type=kind, values=values, defaults=defaults)
    return Config(path=path, exists=True, defaults=defaults, profiles=profiles)


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    """Find and load the config file; a missing file is an empty config."""
    path = resolve_config_path(explicit)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(
                f"config file {path} does not exist",
                hint="check the --config path, or create one with `medimg config init`",
            ) from None
        return Config(path=path, exists=False, defaults=Defaults(), profiles={})
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    return parse_config(text, path)


def sample_config() -> str:
    """The commented starter config shipped with the package."""
    from importlib.resources import files

    return str((files("medimg_cli") / "sample-config.toml").read_text(encoding="utf-8"))


def write_new_config(path: Path, text: str, *, force: bool) -> None:
    """Write a config file; refuse to replace an existing one unless forced."""
    from medimg_cli.storage import write_atomic

    if path.exists() and not force:
        raise ConfigError(
            f"{path} exists already; not overwriting it",
            hint="use --force to replace it (the old file is kept as config.toml.bak)",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        backup = path.with_name(path.name + ".bak")
        backup.write_bytes(path.read_bytes())
    write_atomic(path, text.encode("utf-8"))
