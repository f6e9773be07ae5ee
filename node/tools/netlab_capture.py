"""A wire capture on the lab's bridge: a raw AF_PACKET socket in a thread, bounded in bytes.

    with Capture(lab.net.bridge) as cap:
        ...                                   # traffic
    cap.data                                  # every frame seen, concatenated
    cap.count(b"secret")                      # occurrences of a byte string

Stands in for tcpdump (not installed everywhere): what a wiretap on the validators' network
would record. Linux only, needs root (the lab needs both anyway).
"""

from __future__ import annotations

import socket
import threading

ETH_P_ALL = 0x0003
CAPTURE_BYTES_MAX = 256 * 1024 * 1024


class Capture:
    def __init__(self, interface: str, bytes_max: int = CAPTURE_BYTES_MAX) -> None:
        self.interface = interface
        self.bytes_max = bytes_max
        self.frames = 0
        self._chunks: list[bytes] = []
        self._size = 0
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._sock.bind((interface, 0))
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._run, daemon=True, name="capture")

    def __enter__(self) -> Capture:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.frames += 1
            if self._size < self.bytes_max:
                self._chunks.append(frame)
                self._size += len(frame)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._sock.close()

    @property
    def data(self) -> bytes:
        return b"\n".join(self._chunks)

    def count(self, needle: bytes) -> int:
        return self.data.count(needle)
