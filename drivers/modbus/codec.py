"""Register codec: Modbus words to engineering numbers and back, in one place.

Types are numpy dtypes; the order names the bytes of a 32-bit value as they travel, A being
the most significant: ABCD is big-endian, CDAB swaps the words, BADC swaps the bytes inside
each word, DCBA reverses all. For 64-bit values the same rule applies to four words.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

TYPES: dict[str, tuple[str, int]] = {
    "int16": ("i2", 1),
    "uint16": ("u2", 1),
    "int32": ("i4", 2),
    "uint32": ("u4", 2),
    "int64": ("i8", 4),
    "uint64": ("u8", 4),
    "float32": ("f4", 2),
    "float64": ("f8", 4),
}
ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")

_WORDS_REVERSED = {"CDAB", "DCBA"}
_BYTES_SWAPPED = {"BADC", "DCBA"}


def width(type_name: str) -> int:
    """Registers one value of this type occupies."""
    return TYPES[type_name][1]


def _swap_bytes(words: npt.NDArray[np.uint16]) -> npt.NDArray[np.uint16]:
    return ((words >> 8) | (words << 8)).astype(np.uint16)


def decode(
    block: npt.NDArray[np.uint16], offsets: npt.NDArray[np.intp], type_name: str, order: str
) -> npt.NDArray[np.float64]:
    """Decode values of one type and order at `offsets` (in registers) of a register block."""
    code, n = TYPES[type_name]
    index = offsets[:, None] + np.arange(n)
    if order in _WORDS_REVERSED:
        index = index[:, ::-1]
    words = block[index]
    if order in _BYTES_SWAPPED:
        words = _swap_bytes(words)
    raw = np.ascontiguousarray(words, dtype=">u2").tobytes()
    return np.frombuffer(raw, dtype=">" + code).astype(np.float64)


def decode_bits(
    block: npt.NDArray[np.uint16], offsets: npt.NDArray[np.intp], bits: npt.NDArray[np.intp]
) -> npt.NDArray[np.float64]:
    """One bit of each register at `offsets` (bit 0 is the least significant): 0.0 or 1.0.

    A bit table (coils, discrete inputs) arrives as one 0/1 word per bit; pass bits of 0.
    """
    return ((block[offsets] >> bits.astype(np.uint16)) & 1).astype(np.float64)


def encode(value: float, type_name: str, order: str) -> list[int]:
    """The registers a device would send for `value` (used by the simulated plant)."""
    code, _ = TYPES[type_name]
    if code.startswith("f"):
        raw = np.array([value], dtype=">" + code)
    else:
        # A device saturates at its type's range (and float64 cannot hold 2**64 - 1 exactly).
        info = np.iinfo(np.dtype(code))
        raw = np.array([min(max(round(value), int(info.min)), int(info.max))], dtype=">" + code)
    words = np.frombuffer(raw.tobytes(), dtype=">u2").astype(np.uint16)
    if order in _BYTES_SWAPPED:
        words = _swap_bytes(words)
    if order in _WORDS_REVERSED:
        words = words[::-1]
    return [int(w) for w in words]
