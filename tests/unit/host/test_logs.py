"""node.host.logs: one structured line per event in both formats, secrets masked everywhere."""

from __future__ import annotations

import gc
import io
import json
import logging
import shlex
import sys
from collections.abc import Generator, Iterator

import pytest

from node.host.logs import LogConfigError, add_secret, clear_secrets, redact, setup_logging

TOKEN = "adm-7f3c9a1e5b2d4f60"


@pytest.fixture(autouse=True)
def _clean_logging() -> Iterator[None]:
    root = logging.getLogger()
    before_handlers, before_level = list(root.handlers), root.level
    clear_secrets()
    yield
    clear_secrets()
    for h in list(root.handlers):
        if h not in before_handlers:
            root.removeHandler(h)
    root.setLevel(before_level)


def lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line]


def kv_parse(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in shlex.split(line))


def test_json_line_per_event_with_fields() -> None:
    out = io.StringIO()
    setup_logging("json", "info", out)
    log = logging.getLogger("node.host.runtime")
    log.info("block_committed", extra={"height": 7, "txs": 120, "view": 1, "ms": 12.5})
    log.warning("view_change", extra={"from_view": 1, "to_view": 2, "reason": "timeout"})
    log.warning("peer_misbehaving", extra={"peer": 3, "reason": "bad_frame", "digest": b"\xab"})
    log.debug("not shown at info")
    got = [json.loads(line) for line in lines(out)]
    assert len(got) == 3
    first = got[0]
    assert first["event"] == "block_committed"
    assert first["level"] == "info"
    assert first["logger"] == "node.host.runtime"
    assert (first["height"], first["txs"], first["view"], first["ms"]) == (7, 120, 1, 12.5)
    assert first["ts"].endswith("Z")
    assert got[1]["level"] == "warning"
    assert got[1]["to_view"] == 2
    assert got[2]["peer"] == 3
    assert got[2]["digest"] == "0xab"


def test_kv_format_and_text_alias() -> None:
    for fmt in ("kv", "text"):
        out = io.StringIO()
        setup_logging(fmt, "DEBUG", out)
        log = logging.getLogger("node.net.p2p")
        log.debug("peer_connected", extra={"peer": 1})
        log.warning("peer_misbehaving", extra={"peer": 2, "reason": 'has "quotes" and = sign'})
        got = [kv_parse(line) for line in lines(out)]
        assert len(got) == 2
        assert got[0]["event"] == "peer_connected"
        assert got[0]["level"] == "debug"
        assert got[1]["peer"] == "2"
        assert got[1]["reason"] == 'has "quotes" and = sign'


def test_traceback_folded_into_one_line() -> None:
    out = io.StringIO()
    setup_logging("json", "info", out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("node.api.rpc").exception(
            "rpc_internal_error", extra={"method": "tx_get"}
        )
    (line,) = lines(out)
    record = json.loads(line)
    assert record["event"] == "rpc_internal_error"
    assert "RuntimeError: boom" in record["exc"]


@pytest.mark.parametrize("fmt", ["json", "kv"])
def test_secret_masked_in_message_fields_and_traceback(fmt: str) -> None:
    out = io.StringIO()
    setup_logging(fmt, "info", out)
    add_secret(TOKEN)
    log = logging.getLogger("node.host.config")
    log.info("config_loaded", extra={"admin_token": TOKEN, "url": f"http://x/?t={TOKEN}"})
    log.info("bearer %s seen", TOKEN)
    try:
        raise ValueError(f"bad token {TOKEN}")
    except ValueError:
        log.exception("auth_failed")
    text = out.getvalue()
    assert TOKEN not in text
    assert text.count("***") >= 4
    assert len(lines(out)) == 3


def test_secret_with_json_escapes_is_masked() -> None:
    out = io.StringIO()
    setup_logging("json", "info", out)
    secret = 'tok"en\\with-é'
    add_secret(secret)
    logging.getLogger("x").info("e", extra={"v": secret})
    record = json.loads(lines(out)[0])
    assert record["v"] == "***"


def test_redact_and_short_secret_refused() -> None:
    add_secret(TOKEN)
    assert redact(f"a {TOKEN} b {TOKEN}") == "a *** b ***"
    with pytest.raises(LogConfigError):
        add_secret("short")


def test_bad_options_name_the_option() -> None:
    with pytest.raises(LogConfigError, match="log format"):
        setup_logging("xml")
    with pytest.raises(LogConfigError, match="log level"):
        setup_logging("json", "loud")


def test_setup_twice_keeps_one_handler() -> None:
    out = io.StringIO()
    setup_logging("json", "info", io.StringIO())
    setup_logging("json", "info", out)
    logging.getLogger("y").info("once")
    assert len(lines(out)) == 1


class _Pause:
    """An awaitable that suspends its coroutine once (no event loop needed)."""

    def __await__(self) -> Generator[None, None, None]:
        yield


def test_an_exception_python_cannot_raise_is_one_json_record() -> None:
    """Seen in CI: a coroutine closed by the garbage collector as a node stopped made Python
    print "Exception ignored in: <coroutine ...>" and a traceback as raw lines into node.log."""
    out = io.StringIO()
    before = sys.unraisablehook
    try:
        setup_logging("json", "info", out)

        async def handler() -> None:
            try:
                await _Pause()
            finally:
                raise RuntimeError(f"closing with {TOKEN}")

        add_secret(TOKEN)
        coro = handler()
        coro.send(None)  # suspended in its sleep
        del coro  # closed by the collector: its finally raises where nothing can catch it
        gc.collect()
    finally:
        sys.unraisablehook = before
    [line] = lines(out)
    record = json.loads(line)
    assert record["event"] == "exception_ignored"
    assert record["level"] == "warning"
    assert "handler" in record["target"]
    assert record["error"].startswith("RuntimeError: closing with")
    assert TOKEN not in line
