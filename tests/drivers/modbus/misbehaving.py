"""A Modbus TCP slave on a raw socket that answers wrongly in one named way.

pymodbus's own server always answers correctly; the faults a field device shows (a reply
that carries more registers than asked for, a wrong byte count, another function code or
transaction id, garbage, half a frame, silence, an exception code) need a slave written
byte by byte. One mode per slave; `good` answers correctly, so that a test can tell the
slave from the fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading

import serial

MODES = (
    "good",
    "oversized",  # 126 registers for any read, MBAP length to match (a full, valid frame)
    "byte_count_high",  # byte count and data two bytes longer than asked
    "byte_count_low",  # two bytes shorter
    "odd_byte_count",  # byte count 2n+1
    "mbap_length_255",  # header says 255 bytes follow, fewer do
    "wrong_function",  # function 4 for a read of function 3
    "wrong_transaction",  # the transaction id of another request
    "garbage",  # bytes that are no frame
    "truncated",  # the first half of a good frame, then nothing
    "silence",  # no reply at all
    "inf",  # a correct frame whose float32 values are +inf
    "exception_1",
    "exception_2",
    "exception_3",
    "exception_4",
    "exception_11",
)
VALUE = 0x4148  # 0x41480000 is 12.5 as float32: registers [0x4148, 0x0000, ...]


def _registers(count: int, mode: str) -> bytes:
    words = []
    for i in range(count):
        if mode == "inf":
            words.append(0x7F80 if i % 2 == 0 else 0x0000)
        else:
            words.append(VALUE if i % 2 == 0 else 0x0000)
    return b"".join(struct.pack(">H", w) for w in words)


def reply(mode: str, request: bytes) -> bytes | None:
    """The bytes answered to one request frame (MBAP + PDU), or None for silence."""
    tid, _proto, _length, unit = struct.unpack(">HHHB", request[:7])
    function, _start, count = struct.unpack(">BHH", request[7:12])

    def frame(pdu: bytes, *, tid: int = tid, length: int | None = None) -> bytes:
        size = len(pdu) + 1 if length is None else length
        return struct.pack(">HHHB", tid, 0, size, unit) + pdu

    data = _registers(count, mode)
    if mode in ("good", "inf", "truncated"):
        whole = frame(struct.pack(">BB", function, len(data)) + data)
        return whole[: len(whole) // 2] if mode == "truncated" else whole
    if mode == "oversized":
        data = _registers(126, "good")[:252]
        return frame(struct.pack(">BB", function, 252) + data)
    if mode == "byte_count_high":
        data += b"\x00\x00"
        return frame(struct.pack(">BB", function, len(data)) + data)
    if mode == "byte_count_low":
        data = data[:-2]
        return frame(struct.pack(">BB", function, len(data)) + data)
    if mode == "odd_byte_count":
        data += b"\x00"
        return frame(struct.pack(">BB", function, len(data)) + data)
    if mode == "mbap_length_255":
        return frame(struct.pack(">BB", function, len(data)) + data, length=255)
    if mode == "wrong_function":
        return frame(struct.pack(">BB", 4 if function == 3 else 3, len(data)) + data)
    if mode == "wrong_transaction":
        return frame(struct.pack(">BB", function, len(data)) + data, tid=(tid + 7) & 0xFFFF)
    if mode == "garbage":
        return b"\x13\x37" * 11
    if mode == "silence":
        return None
    if mode.startswith("exception_"):
        return frame(struct.pack(">BB", function | 0x80, int(mode.split("_")[1])))
    raise ValueError(mode)


class MisbehavingSlave:
    """Serves `mode` on 127.0.0.1 at a free port until `stop()`."""

    def __init__(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(mode)
        self.mode = mode
        self.requests = 0
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                header = await reader.readexactly(7)
                length = struct.unpack(">H", header[4:6])[0]
                body = await reader.readexactly(length - 1)
                self.requests += 1
                answer = reply(self.mode, header + body)
                if answer is not None:
                    writer.write(answer)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()


# --- Modbus RTU on the far end of a serial line --------------------------------------------

RTU_MODES = (
    "good",
    "oversized",
    "byte_count_high",
    "byte_count_low",
    "wrong_function",
    "wrong_unit",
    "bad_crc",
    "garbage",
    "truncated",
    "silence",
    "exception_4",
)


def crc16(frame: bytes) -> bytes:
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return struct.pack("<H", crc)


def rtu_reply(mode: str, request: bytes) -> bytes | None:
    """The bytes a misbehaving RTU slave answers to one read request (8 bytes)."""
    unit, function, _start, count = struct.unpack(">BBHH", request[:6])

    def frame(body: bytes) -> bytes:
        return body + crc16(body)

    data = _registers(count, "good")
    if mode == "good":
        return frame(struct.pack(">BBB", unit, function, len(data)) + data)
    if mode == "oversized":
        data = _registers(126, "good")[:250]
        return frame(struct.pack(">BBB", unit, function, len(data)) + data)
    if mode == "byte_count_high":
        data += b"\x00\x00"
        return frame(struct.pack(">BBB", unit, function, len(data)) + data)
    if mode == "byte_count_low":
        data = data[:-2]
        return frame(struct.pack(">BBB", unit, function, len(data)) + data)
    if mode == "wrong_function":
        return frame(struct.pack(">BBB", unit, 4 if function == 3 else 3, len(data)) + data)
    if mode == "wrong_unit":
        return frame(struct.pack(">BBB", unit + 1, function, len(data)) + data)
    if mode == "bad_crc":
        good = frame(struct.pack(">BBB", unit, function, len(data)) + data)
        return good[:-2] + bytes([good[-2] ^ 0xFF, good[-1]])
    if mode == "garbage":
        return b"\x13\x37" * 9
    if mode == "truncated":
        whole = frame(struct.pack(">BBB", unit, function, len(data)) + data)
        return whole[: len(whole) // 2]
    if mode == "silence":
        return None
    if mode.startswith("exception_"):
        return frame(struct.pack(">BBB", unit, function | 0x80, int(mode.split("_")[1])))
    raise ValueError(mode)


class RtuMisbehavingSlave:
    """Answers on the slave end of a pseudo-terminal pair in one named wrong way."""

    def __init__(self, port: str, mode: str, *, baudrate: int = 115200) -> None:
        if mode not in RTU_MODES:
            raise ValueError(mode)
        self.port = port
        self.mode = mode
        self.baudrate = baudrate
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rtu-{mode}", daemon=True)

    def start(self) -> None:
        self._serial = serial.Serial(self.port, self.baudrate, timeout=0.05)
        self._thread.start()

    def _run(self) -> None:
        buffer = b""
        while not self._stop.is_set():
            buffer += self._serial.read(64)
            while len(buffer) >= 8:
                request, buffer = buffer[:8], buffer[8:]
                if crc16(request[:6]) != request[6:8]:
                    buffer = b""  # out of step: drop what is there and wait for silence
                    break
                self.requests += 1
                answer = rtu_reply(self.mode, request)
                if answer is not None:
                    self._serial.write(answer)
                    self._serial.flush()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._serial.close()
