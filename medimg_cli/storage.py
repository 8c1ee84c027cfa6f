"""Files on disk: atomic writes, the output layout, sanitised path parts, resume."""

from __future__ import annotations

import contextlib
import os
import re
import struct
import tempfile
import threading
from pathlib import Path


def write_atomic(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one.

    The bytes go to a temporary file in the same directory, are flushed to disk,
    and the temporary file is renamed over `path`. On any error the temporary
    file is removed and `path` is untouched.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------
# Where retrieved instances go: the layout template and its sanitised parts.

DEFAULT_LAYOUT = "{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"
# Attributes a layout may use (all top-level, all before the pixel data).
LAYOUT_FIELDS = {
    "PatientID": 0x00100020,
    "PatientName": 0x00100010,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "SOPInstanceUID": 0x00080018,
    "SOPClassUID": 0x00080016,
    "StudyDate": 0x00080020,
    "AccessionNumber": 0x00080050,
    "Modality": 0x00080060,
    "StudyDescription": 0x00081030,
    "SeriesDescription": 0x0008103E,
    "SeriesNumber": 0x00200011,
    "InstanceNumber": 0x00200013,
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._\-^ ]+")
_MAX_PART = 64
PART_SUFFIX = ".part"


class Layout:
    """A layout template such as `{PatientID}/{StudyInstanceUID}/{SOPInstanceUID}.dcm`."""

    def __init__(self, template: str = DEFAULT_LAYOUT) -> None:
        from medimg_cli.errors import UsageError

        fields = re.findall(r"{([^{}]*)}", template)
        unknown = [f for f in fields if f not in LAYOUT_FIELDS]
        if unknown:
            raise UsageError(
                f"--layout '{template}': unknown field {{{unknown[0]}}}",
                hint="fields: " + ", ".join("{" + f + "}" for f in LAYOUT_FIELDS),
            )
        if "SOPInstanceUID" not in fields:
            raise UsageError(
                f"--layout '{template}' must contain {{SOPInstanceUID}}",
                hint="otherwise two instances could be written to the same file",
            )
        if template.startswith("/") or ".." in template.split("/"):
            raise UsageError(f"--layout '{template}' must be a relative path inside --out")
        self.template = template
        self.fields = tuple(dict.fromkeys(fields))
        self.tags = tuple(LAYOUT_FIELDS[f] for f in self.fields)

    def relative_path(self, values: dict[str, str]) -> Path:
        """The file's path below --out, each value made safe to be one path part."""
        parts = {f: safe_part(values.get(f, "")) for f in self.fields}
        return Path(self.template.format(**parts))


def safe_part(value: str) -> str:
    """A value from the network as one harmless path component.

    Anything but letters, digits, `.`, `_`, `-`, `^` and space becomes `_`;
    leading dots go (no `..`, no hidden files); long values are cut and given a
    short hash so that distinct values stay distinct.
    """
    import hashlib

    text = _UNSAFE.sub("_", value.replace("\x00", "")).strip(" ").lstrip(".")
    if not text:
        text = "_"
    if len(text) > _MAX_PART:
        digest = hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:10]
        text = text[: _MAX_PART - 11] + "~" + digest
    return text


def inside(root: Path, relative: Path) -> Path:
    """`root / relative`, refusing anything that would land outside `root`."""
    target = Path(os.path.normpath(root / relative))
    if os.path.commonpath([root, target]) != str(root) or target == root:
        raise ValueError(f"path {relative} escapes {root}")
    return target


def write_new_file(
    path: Path, chunks: list[bytes] | tuple[bytes, ...], *, make_parent: bool = True
) -> int:
    """Write `chunks` to `path` via a temporary `.part` file renamed when complete.

    A crash leaves at most a `.part` file, never a truncated final one.
    Returns the number of bytes written.
    """
    if make_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}{PART_SUFFIX}")
    size = 0
    try:
        with open(tmp, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
                size += len(chunk)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return size


def remove_partials(root: Path) -> int:
    """Remove `.part` files left below `root` (after Ctrl-C or a crash)."""
    removed = 0
    if not root.is_dir():
        return 0
    for part in root.rglob(f"*{PART_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
            removed += 1
    return removed


def stored_sop_uids(root: Path) -> set[str]:
    """SOP Instance UIDs of the complete DICOM files below `root` (from their file meta)."""
    found: set[str] = set()
    if not root.is_dir():
        return found
    for path in root.rglob("*"):
        if path.name.endswith(PART_SUFFIX) or not path.is_file():
            continue
        uid = read_meta_sop_uid(path)
        if uid:
            found.add(uid)
    return found


def read_meta_sop_uid(path: Path) -> str | None:
    """MediaStorageSOPInstanceUID from a DICOM file's meta, or None if not DICOM."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    if len(head) < 144 or head[128:132] != b"DICM":
        return None
    pos = 132
    while pos + 8 <= len(head):
        group, elem = struct.unpack_from("<HH", head, pos)
        if group != 0x0002:
            return None
        vr = head[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"UN", b"UT", b"SQ", b"UC", b"UR"):
            (length,) = struct.unpack_from("<I", head, pos + 8)
            pos += 12
        else:
            (length,) = struct.unpack_from("<H", head, pos + 6)
            pos += 8
        if elem == 0x0003:
            return head[pos : pos + length].rstrip(b"\x00 ").decode("ascii", "replace")
        pos += length
    return None
