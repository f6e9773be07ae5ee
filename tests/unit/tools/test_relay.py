"""The fault lab's link shaper (node/tools/relay.py) on 127.0.0.1: delay, one-way cut, heal."""

from __future__ import annotations

import socket
import threading
import time

from node.tools.relay import Relay, Shaper


def _echo_server() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def test_delay_and_one_way_cut_then_heal() -> None:
    shaper = Shaper(2, seed=1)
    relay = Relay(shaper)
    srv, port = _echo_server()
    try:
        # 127.0.0.1 plays validator 0 dialing validator 1 (the echo server).
        listen = relay.listen(1, "127.0.0.1", ("127.0.0.1", port), {"127.0.0.1": 0})
        shaper.update([(0, 1), (1, 0)], delay_ms=50.0)
        with socket.create_connection(("127.0.0.1", listen), timeout=5) as c:
            started = time.monotonic()
            c.sendall(b"ping")
            assert c.recv(4) == b"ping"
            assert time.monotonic() - started >= 0.095  # 50 ms each way
            shaper.update([(1, 0)], cut=True)  # the echo's answers are held, requests flow
            c.sendall(b"held")
            c.settimeout(0.4)
            try:
                got = c.recv(4)
            except TimeoutError:
                got = b""
            assert got == b""
            shaper.update([(1, 0)], cut=False)
            c.settimeout(5)
            assert c.recv(4) == b"held"  # delivered at the heal, as TCP retransmission would
    finally:
        relay.close()
        srv.close()


def test_emulated_loss_stalls_are_seeded() -> None:
    a, b = Shaper(2, seed=7), Shaper(2, seed=7)
    for s in (a, b):
        s.update([(0, 1)], delay_ms=25.0, loss=0.05)
    delays_a = [a.delay_s(0, 1, 20_000) for _ in range(200)]
    assert delays_a == [b.delay_s(0, 1, 20_000) for _ in range(200)]
    assert min(delays_a) == 0.025
    assert max(delays_a) >= 0.025 + 0.25  # some chunks waited an RTO
