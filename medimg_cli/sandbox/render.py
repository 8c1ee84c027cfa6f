"""Rendered images for WADO-RS ``/rendered``: PNG and baseline JPEG, standard library only.

The frame's stored values go through the Modality LUT (rescale slope and
intercept) and then to 8 bits, by the frame's own range as Orthanc does, or
by the window the request gives (``window=center,width``); MONOCHROME1 is
inverted, RGB stays colour in PNG and becomes luminance in JPEG. Uncompressed
pixel data only. The JPEG encoder
is the plain baseline process of ITU T.81 with the example tables of its
Annex K (quality ~90): a few dozen lines, plenty for a sandbox's thumbnails.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

_UNPACK = {(8, 0): "B", (8, 1): "b", (16, 0): "H", (16, 1): "h", (32, 0): "I", (32, 1): "i"}


class RenderError(ValueError):
    """The instance cannot be rendered (compressed, unusual pixel format)."""


def render(path: Path, frame: int = 1, window: tuple[float, float] | None = None
           ) -> tuple[int, int, int, bytes]:
    """(width, height, channels, 8-bit pixels row by row) of one frame.

    Without ``window`` (center, width) the frame's own range is stretched to
    0-255, as Orthanc's DICOMweb plugin renders; the instance's VOI window is
    not applied (a WADO-RS ``window=`` parameter chooses one).
    """
    from pydicom import dcmread

    ds = dcmread(path)
    if "PixelData" not in ds:
        raise RenderError("the instance has no pixel data")
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        raise RenderError(f"pixel data in {ds.file_meta.TransferSyntaxUID.name} is not "
                          "rendered by the sandbox")
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1))
    bits = int(ds.BitsAllocated)
    signed = int(ds.get("PixelRepresentation", 0))
    code = _UNPACK.get((bits, signed))
    if code is None or samples not in (1, 3):
        raise RenderError(f"{bits}-bit pixels with {samples} samples are not rendered")
    count = rows * columns * samples
    size = count * bits // 8
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame <= frames:
        raise RenderError(f"frame {frame} does not exist (the instance has {frames})")
    data = bytes(ds.PixelData)[(frame - 1) * size : frame * size]
    values = list(struct.unpack(f"<{count}{code}", data))
    if samples == 3:
        if int(ds.get("PlanarConfiguration", 0)) == 1:
            plane = rows * columns
            values = [values[p * plane + i] for i in range(plane) for p in range(3)]
        return columns, rows, 3, bytes(max(0, min(255, v)) for v in values)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    real = [v * slope + intercept for v in values]
    if window is None:  # the frame's range, rounded as Orthanc does
        low = min(real)
        span = max(max(real) - low, 1e-9)
    else:  # PS3.3 C.11.2.1.2.1, linear
        center, width = window
        low = center - 0.5 - (width - 1) / 2
        span = max(width - 1, 1e-9)
    invert = str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    out = bytearray(count)
    for i, v in enumerate(real):
        level = int(max(0.0, min(1.0, (v - low) / span)) * 255 + 0.5)
        out[i] = 255 - level if invert else level
    return columns, rows, 1, bytes(out)


# --------------------------------------------------------------------------
# PNG


def png(width: int, height: int, channels: int, pixels: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    stride = width * channels
    raw = b"".join(b"\x00" + pixels[y * stride : (y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0 if channels == 1 else 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


# --------------------------------------------------------------------------
# Baseline JPEG (grayscale)

_ZIGZAG = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34,
    27, 20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37,
    44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
]
_LUMINANCE_Q = [  # Annex K.1, natural order
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
]
_DC_BITS = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
_DC_VALUES = list(range(12))
_AC_BITS = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D]
_AC_VALUES = [
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61,
    0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xA1, 0x08, 0x23, 0x42, 0xB1, 0xC1, 0x15, 0x52,
    0xD1, 0xF0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0A, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x25,
    0x26, 0x27, 0x28, 0x29, 0x2A, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45,
    0x46, 0x47, 0x48, 0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64,
    0x65, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x83,
    0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
    0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6,
    0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3,
    0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE1, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8,
    0xE9, 0xEA, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA,
]
_COS = [[math.cos((2 * x + 1) * u * math.pi / 16) for x in range(8)] for u in range(8)]
_SCALE = [1 / math.sqrt(2)] + [1.0] * 7


def _huffman(bits: list[int], values: list[int]) -> dict[int, tuple[int, int]]:
    """value -> (code, length) from a DHT's BITS and HUFFVAL (Annex C)."""
    table: dict[int, tuple[int, int]] = {}
    code, k = 0, 0
    for length in range(1, 17):
        for _ in range(bits[length - 1]):
            table[values[k]] = (code, length)
            code += 1
            k += 1
        code <<= 1
    return table


class _BitWriter:
    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.count = 0

    def write(self, code: int, length: int) -> None:
        self.acc = (self.acc << length) | (code & ((1 << length) - 1))
        self.count += length
        while self.count >= 8:
            self.count -= 8
            byte = (self.acc >> self.count) & 0xFF
            self.out.append(byte)
            if byte == 0xFF:
                self.out.append(0x00)
        self.acc &= (1 << self.count) - 1

    def flush(self) -> bytes:
        if self.count:
            self.write((1 << (8 - self.count)) - 1, 8 - self.count)
        return bytes(self.out)


def _category(value: int) -> tuple[int, int]:
    """(size category, the bits to write) of a DC difference or AC coefficient."""
    magnitude = abs(value)
    size = magnitude.bit_length()
    bits = value if value >= 0 else value + (1 << size) - 1
    return size, bits


def jpeg(width: int, height: int, channels: int, pixels: bytes, quality: int = 90) -> bytes:
    """A baseline grayscale JPEG (colour input is reduced to luminance)."""
    if channels == 3:
        pixels = bytes((299 * pixels[i] + 587 * pixels[i + 1] + 114 * pixels[i + 2]) // 1000
                       for i in range(0, len(pixels), 3))
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    q = [max(1, min(255, (v * int(scale) + 50) // 100)) for v in _LUMINANCE_Q]
    dc_table = _huffman(_DC_BITS, _DC_VALUES)
    ac_table = _huffman(_AC_BITS, _AC_VALUES)
    writer = _BitWriter()
    previous_dc = 0
    for by in range(0, height, 8):
        for bx in range(0, width, 8):
            block = [
                float(pixels[min(by + y, height - 1) * width + min(bx + x, width - 1)]) - 128
                for y in range(8) for x in range(8)]
            coefficients = []
            for v in range(8):
                for u in range(8):
                    total = 0.0
                    for y in range(8):
                        row = block[y * 8 : y * 8 + 8]
                        cu = _COS[u]
                        total += _COS[v][y] * sum(row[x] * cu[x] for x in range(8))
                    coefficients.append(0.25 * _SCALE[u] * _SCALE[v] * total)
            quantised = [round(coefficients[i] / q[i]) for i in range(64)]
            zigzag = [quantised[i] for i in _ZIGZAG]
            diff = zigzag[0] - previous_dc
            previous_dc = zigzag[0]
            size, bits = _category(diff)
            writer.write(*dc_table[size])
            if size:
                writer.write(bits, size)
            run = 0
            for k in range(1, 64):
                value = zigzag[k]
                if value == 0:
                    run += 1
                    continue
                while run > 15:
                    writer.write(*ac_table[0xF0])
                    run -= 16
                size, bits = _category(value)
                writer.write(*ac_table[(run << 4) | size])
                writer.write(bits, size)
                run = 0
            if run:
                writer.write(*ac_table[0x00])
    scan = writer.flush()

    def segment(marker: int, body: bytes) -> bytes:
        return struct.pack(">HH", 0xFF00 | marker, len(body) + 2) + body

    dqt = b"\x00" + bytes(q[i] for i in _ZIGZAG)
    sof = struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00"
    dht = (b"\x00" + bytes(_DC_BITS) + bytes(_DC_VALUES)
           + b"\x10" + bytes(_AC_BITS) + bytes(_AC_VALUES))
    sos = b"\x01\x01\x00\x00\x3f\x00"
    return (b"\xff\xd8" + segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
            + segment(0xDB, dqt) + segment(0xC0, sof) + segment(0xC4, dht)
            + segment(0xDA, sos) + scan + b"\xff\xd9")
