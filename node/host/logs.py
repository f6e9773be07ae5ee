"""Structured logging: one line per event, a stable event name plus fields, never a secret.

Call sites log an event name as the message and the fields through ``extra``::

    log.info("block_committed", extra={"height": h, "txs": n, "view": v, "ms": 12.5})
    log.warning("view_change", extra={"from_view": 3, "to_view": 4, "reason": "timeout"})
    log.warning("peer_misbehaving", extra={"peer": 2, "reason": "bad_frame"})

``setup_logging("json")`` writes ``{"ts": ..., "level": "info", "logger": ..., "event":
"block_committed", "height": 7, ...}``; ``setup_logging("kv")`` writes ``ts=... level=info
logger=... event=block_committed height=7 ...``. Both are one line per event, so ``grep`` and log
shippers work without multi-line handling (tracebacks are folded into the ``exc`` field).

Secrets registered with ``add_secret`` (the admin token, at startup) are masked anywhere in the
final line, whatever field or message carried them, as a last line of defence.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import IO, Any

# "text" is an alias of "kv" (node/host/config.py accepts log.format = "json" | "text").
FORMATS = ("json", "kv", "text")
LEVELS = ("debug", "info", "warning", "error", "critical")
MASK = "***"
# Secrets shorter than this would mask ordinary words and numbers; refuse them.
SECRET_LEN_MIN = 8

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RESERVED = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


class LogConfigError(ValueError):
    """A logging option has a bad value (names the option)."""


def add_secret(secret: str) -> None:
    """Mask ``secret`` in every line written by handlers set up here, from now on."""
    if len(secret) < SECRET_LEN_MIN:
        raise LogConfigError(f"secret to redact must be at least {SECRET_LEN_MIN} characters")
    with _secrets_lock:
        _secrets.add(secret)
        # A JSON line carries the escaped form of quotes, backslashes and non-ASCII characters.
        escaped = json.dumps(secret)[1:-1]
        if escaped != secret:
            _secrets.add(escaped)


def clear_secrets() -> None:
    """Forget every registered secret (tests)."""
    with _secrets_lock:
        _secrets.clear()


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)  # longest first: overlapping secrets
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """Event name, level and the ``extra`` fields of a record, in a stable order."""
    out: dict[str, Any] = {
        "ts": _timestamp(record.created),
        "level": record.levelname.lower(),
        "logger": record.name,
        "event": record.getMessage(),
    }
    for key, value in record.__dict__.items():
        if key not in _RESERVED and not key.startswith("_"):
            out[key] = value
    if record.exc_info:
        # Formatter.formatException is a method, but does not depend on the instance's fmt.
        out["exc"] = logging.Formatter().formatException(record.exc_info)
    elif record.exc_text:
        out["exc"] = record.exc_text
    return out


def _timestamp(created: float) -> str:
    """UTC ISO-8601 with milliseconds: sortable and unambiguous across machines."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{whole}.{int(created % 1 * 1000):03d}Z"


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=_jsonable, separators=(",", ":"))


def _kv_value(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    # Quote anything that would split or confuse a key=value parser; json.dumps escapes newlines.
    if text == "" or any(c in text for c in ' "=\n\r\t\\'):
        return json.dumps(text)
    return text


class KeyValueFormatter(logging.Formatter):
    """``key=value`` pairs on one line (logfmt)."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_kv_value(value)}" for key, value in _fields(record).items())


class RedactingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that masks registered secrets in the fully formatted line.

    Redaction happens after formatting (not in a filter on record fields) so a secret is caught
    wherever it hides: the message, an ``extra`` field, an exception text or a repr.
    """

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _level(level: str) -> int:
    name = level.lower()
    if name not in LEVELS:
        raise LogConfigError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    return int(getattr(logging, name.upper()))


def setup_logging(
    fmt: str = "json", level: str = "info", stream: IO[str] | None = None
) -> logging.Handler:
    """Route the root logger to one redacting handler writing ``fmt`` lines to ``stream``.

    Replaces handlers installed by an earlier call (so a test or a restart can call it again) and
    quiets aiohttp's per-request access log, which would log one INFO line per RPC call.
    """
    if fmt not in FORMATS:
        raise LogConfigError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = RedactingHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, RedactingHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_level(level))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    sys.unraisablehook = _log_unraisable
    return handler


def _log_unraisable(unraisable: Any) -> None:
    """An exception Python cannot raise (a coroutine closed by the garbage collector while a
    node shuts down, say) as one log record: Python's own hook printed "Exception ignored in"
    and a traceback as raw lines into a log that is otherwise one record a line."""
    exc = unraisable.exc_value
    logging.getLogger("node.unraisable").warning(
        "exception_ignored",
        extra={
            "where": unraisable.err_msg or "Exception ignored in",
            "target": repr(unraisable.object)[:200],
            "error": None if exc is None else f"{type(exc).__name__}: {exc}"[:500],
        },
    )
