"""A lean MQTT 3.1.1 QoS 1 publisher for the bench's load, so that the load costs little of the CPU the
gateway is measured on.

Real devices publish from their own machines; the bench publishes from the gateway's. paho's publisher
spent about 130 µs of CPU per message (a wake-up write, a send and a PUBACK handled in Python for every
message, profiled): 65-85 % of one of this machine's two cores at 5,000 readings/s. This one frames
PUBLISH packets itself, sends every message due in a tick with one `sendall`, and counts PUBACKs from
bulk reads on its own thread. It speaks only what the bench needs: CONNECT (optionally with a username
and password), PUBLISH at QoS 1, PUBACK and DISCONNECT; it is not product code.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterable

from rpmgw.bench.errors import BenchError

CONNACK, PUBLISH_QOS1, PUBACK, DISCONNECT = 0x20, 0x32, 0x40, b"\xe0\x00"


def remaining_length(n: int) -> bytes:
    """MQTT's variable-length encoding of a packet's remaining length (1-4 bytes)."""
    if not 0 <= n <= 268_435_455:
        raise ValueError(f"remaining length {n} out of range")
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _string(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, credentials: tuple[str, str] | None) -> bytes:
    """CONNECT, MQTT 3.1.1, clean session, no keep-alive (the bench publishes all the time)."""
    flags = 0x02 | (0xC0 if credentials else 0)
    payload = _string(client_id) + (_string(credentials[0]) + _string(credentials[1]) if credentials else b"")
    variable = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", 0)
    body = variable + payload
    return bytes([0x10]) + remaining_length(len(body)) + body


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    """PUBLISH at QoS 1 with `packet_id` (1-65535)."""
    head = _string(topic) + struct.pack("!H", packet_id)
    return bytes([PUBLISH_QOS1]) + remaining_length(len(head) + len(payload)) + head + payload


class RawPublisher:
    """One connection; `publish_many` from one thread; `acknowledged` counts PUBACKs as they arrive."""

    def __init__(
        self, host: str, port: int, client_id: str, credentials: tuple[str, str] | None = None
    ) -> None:
        self._sock = socket.create_connection((host, port), timeout=30)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.sendall(connect_packet(client_id, credentials))
        connack = self._read_exactly(4)
        if connack[0] != CONNACK or connack[3] != 0:
            raise BenchError(f"the broker refused the bench publisher: CONNACK {connack.hex()}")
        self._sock.settimeout(None)
        self._next_id = 0
        self.published = 0
        self.acknowledged = 0  # written by the reader thread only
        self.error: BaseException | None = None
        self._reader = threading.Thread(target=self._read_acks, name="bench-rawpub-acks", daemon=True)
        self._reader.start()

    def publish_many(self, messages: Iterable[tuple[str, bytes]]) -> int:
        """Publish at QoS 1 in one write; returns how many. The caller bounds what is in flight
        (at most 65,535: packet ids are not reused while in flight)."""
        if self.error is not None:
            raise BenchError(f"the bench publisher's connection failed: {self.error!r}")
        packets = []
        for topic, payload in messages:
            self._next_id = self._next_id % 65_535 + 1
            packets.append(publish_packet(topic, payload, self._next_id))
        if packets:
            self._sock.sendall(b"".join(packets))
            self.published += len(packets)
        return len(packets)

    def close(self) -> None:
        """DISCONNECT and close (PUBACKs not yet read are not counted)."""
        try:
            self._sock.sendall(DISCONNECT)
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone: closing anyway
        finally:
            self._sock.close()
            self._reader.join(5)

    def _read_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self._sock.recv(n - len(data))
            if not chunk:
                raise BenchError("the broker closed the bench publisher's connection")
            data += chunk
        return data

    def _read_acks(self) -> None:
        buffer = b""
        try:
            while True:
                chunk = self._sock.recv(65_536)
                if not chunk:
                    return
                buffer += chunk
                whole = len(buffer) - len(buffer) % 4
                for offset in range(0, whole, 4):
                    if buffer[offset] != PUBACK or buffer[offset + 1] != 2:
                        raise BenchError(
                            f"unexpected packet from the broker: {buffer[offset : offset + 4].hex()}"
                        )
                self.acknowledged += whole // 4
                buffer = buffer[whole:]
        except (OSError, BenchError) as exc:
            self.error = exc
