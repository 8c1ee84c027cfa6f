"""A keyring backend for the tests: one JSON file named by $TEST_KEYRING_FILE.

Selected in medimg subprocesses with ``PYTHON_KEYRING_BACKEND=testkeyring.FileKeyring``
(and the tests directory on ``PYTHONPATH``); see ``oauth_peer.keyring_env``. Lets a
test log in in one process and use the token in the next, and look inside the store.
Only the real-keyring test (``test_keyring_secret_service.py``) uses the Secret Service.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError


class FileKeyring(KeyringBackend):
    priority = 1  # type: ignore[assignment]

    @staticmethod
    def _path() -> Path:
        return Path(os.environ["TEST_KEYRING_FILE"])

    def _load(self) -> dict[str, str]:
        try:
            data: dict[str, str] = json.loads(self._path().read_text())
            return data
        except FileNotFoundError:
            return {}

    def _save(self, data: dict[str, str]) -> None:
        tmp = self._path().with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self._path())

    def get_password(self, service: str, username: str) -> str | None:
        return self._load().get(f"{service}\0{username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        data = self._load()
        data[f"{service}\0{username}"] = password
        self._save(data)

    def delete_password(self, service: str, username: str) -> None:
        data = self._load()
        if data.pop(f"{service}\0{username}", None) is None:
            raise PasswordDeleteError("no such entry")
        self._save(data)


def read(path: Path) -> dict[str, str]:
    """The entries of a test keyring file: ``{"PROFILE:KIND": value}`` (service medimg)."""
    if not path.exists():
        return {}
    raw: dict[str, str] = json.loads(path.read_text())
    return {k.split("\0", 1)[1]: v for k, v in raw.items() if k.startswith("medimg\0")}


class LockedKeyring(KeyringBackend):
    """A keyring that is there but refuses every access (a locked Secret Service)."""

    priority = 1  # type: ignore[assignment]

    def get_password(self, service: str, username: str) -> str | None:
        from keyring.errors import KeyringLocked

        raise KeyringLocked("the collection is locked")

    def set_password(self, service: str, username: str, password: str) -> None:
        from keyring.errors import KeyringLocked

        raise KeyringLocked("the collection is locked")

    def delete_password(self, service: str, username: str) -> None:
        from keyring.errors import KeyringLocked

        raise KeyringLocked("the collection is locked")
