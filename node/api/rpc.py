"""The wallet-facing JSON-RPC 2.0 server over HTTP, on top of a :class:`NodeService`.

Strict at the edge, like aiohttp's own request boundary: the body size is checked before it is
read, parsing rejects deep nesting and non-JSON numbers, each call runs under a timeout (a
batch's calls under one deadline) in a boundary that re-raises ``CancelledError``, maps
``VigilError`` to its code, logs anything else and answers -32603 without a stack trace. Admin
methods need a bearer token compared in constant time; the token is never logged. See
docs/rpc.md for the methods and error codes.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from node.api.console import add_console_routes
from node.api.cors import cors_middleware
from node.api.eth import ETH_METHODS
from node.api.params import METHODS, bind_params, error_obj, parse_json, response
from node.api.service import NodeService
from node.api.ws import WsConfig, WsHub
from node.errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    OVERLOADED,
    PARSE_ERROR,
    TIMEOUT,
    UNAUTHORIZED,
    VigilError,
)

log = logging.getLogger(__name__)
PARSE_INLINE_BYTES_MAX = 64 * 1024  # larger request bodies are parsed in a worker thread

JSON_CONTENT_TYPES = ("application/json", "application/json-rpc", "application/jsonrequest")
STATE_KEY: web.AppKey[RpcState] = web.AppKey("vigil_rpc_state")


@dataclass(slots=True)
class RpcState:
    """Per-app settings and counters (mutable: in-flight requests)."""

    service: NodeService
    admin_token: bytes | None
    body_bytes_max: int
    batch_max: int
    request_timeout_s: float
    connections_max: int
    metrics: Any
    inflight: int = 0


def _http_error(status: int, code: int, message: str, **headers: str) -> web.Response:
    """An HTTP-level refusal that still carries a JSON-RPC error body (id null)."""
    resp = web.Response(
        status=status,
        text=response(None, error=error_obj(code, message)),
        content_type="application/json",
        headers=headers or None,
    )
    return resp


def bearer_ok(header: str | None, token: bytes | None) -> bool:
    """True when ``header`` is ``Bearer <token>``; constant-time in the token's content."""
    if token is None or header is None:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token)


def _count(state: RpcState, method: str, outcome: str, seconds: float | None = None) -> None:
    """Count a request; ``method`` is a known method name or "unknown" (bounded labels)."""
    if state.metrics is not None:
        try:
            state.metrics.observe_rpc(method, outcome, seconds)
        except Exception:  # metrics must never break serving
            log.warning("rpc_metrics_failed", exc_info=True)


_OUTCOME_OF_CODE = {
    METHOD_NOT_FOUND: "invalid",
    INVALID_PARAMS: "invalid",
    UNAUTHORIZED: "unauthorized",
    OVERLOADED: "overloaded",
    TIMEOUT: "timeout",
}


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, str | int | float) and not isinstance(value, bool))


def cross_origin(request: web.Request) -> bool:
    """True when a browser sent this request from a page of another origin.

    Admin methods refuse such requests even with a valid token (a stolen or pasted token must not
    work from another site). Requests without ``Origin`` (curl, the CLI, other servers) are not
    cross-origin. The browser's own ``Sec-Fetch-Site`` verdict is taken when present; otherwise
    the Origin's host must be the Host the request was sent to (or the proxy's
    ``X-Forwarded-Host``): a TLS-terminating proxy changes the scheme, never the host.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site != "none":
        return site != "same-origin"
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    _, sep, rest = origin.partition("://")
    if not sep:
        return True  # "null" (sandboxed frames, file://) and anything malformed
    hosts = {h.strip().lower() for h in request.headers.get("X-Forwarded-Host", "").split(",")}
    hosts.add(request.host.lower())
    return rest.rstrip("/").lower() not in hosts


async def _call_one(
    state: RpcState, req: Any, authorized: bool, foreign: bool = False, timed: bool = True
) -> str | None:
    """Answer one request object; None for a notification. Never raises (except cancellation).

    ``timed=False``: the caller bounds the call's time (a batch's calls share one deadline,
    ``_call_batch``)."""
    if not isinstance(req, dict):
        _count(state, "unknown", "invalid")
        return response(None, error=error_obj(INVALID_REQUEST, "request must be an object"))
    is_notification = "id" not in req
    id_ = req.get("id")
    if not _valid_id(id_):
        _count(state, "unknown", "invalid")
        return response(
            None, error=error_obj(INVALID_REQUEST, "id must be a string, number or null")
        )
    if req.get("jsonrpc") != "2.0":
        _count(state, "unknown", "invalid")
        return response(id_, error=error_obj(INVALID_REQUEST, 'jsonrpc must be "2.0"'))
    name = req.get("method")
    if not isinstance(name, str):
        _count(state, "unknown", "invalid")
        return response(id_, error=error_obj(INVALID_REQUEST, "method must be a string"))
    params = req.get("params")
    if "params" in req and not isinstance(params, list | dict):
        _count(state, "unknown", "invalid")
        return response(
            id_, error=error_obj(INVALID_REQUEST, "params must be an array or an object")
        )
    method = METHODS.get(name) or ETH_METHODS.get(name)
    label = name if method is not None else "unknown"
    error: dict[str, Any] | None = None
    result: Any = None
    started = time.perf_counter()
    try:
        if method is None:
            raise VigilError(METHOD_NOT_FOUND, "method not found")
        if method.admin and foreign:
            raise VigilError(UNAUTHORIZED, "admin method: cross-origin requests are refused")
        if method.admin and not authorized:
            raise VigilError(UNAUTHORIZED, "admin method: missing or invalid bearer token")
        args = bind_params(method, params)
        if timed:
            async with asyncio.timeout(state.request_timeout_s):
                result = await method.call(state.service, args)
        else:
            result = await method.call(state.service, args)
        text = response(id_, result=result)
        outcome = "ok"
    except asyncio.CancelledError:
        raise
    except VigilError as exc:
        error = error_obj(exc.code, exc.message, exc.data)
        outcome = _OUTCOME_OF_CODE.get(exc.code, "error")
    except TimeoutError:
        error = error_obj(TIMEOUT, f"request took longer than {state.request_timeout_s:g} s")
        outcome = "timeout"
    except Exception:  # the boundary: log it, answer -32603, keep serving
        log.exception("rpc_internal_error", extra={"method": label})
        error = error_obj(INTERNAL_ERROR, "internal error")
        outcome = "internal"
    _count(state, label, outcome, time.perf_counter() - started)
    if is_notification:
        return None
    if error is not None:
        return response(id_, error=error)
    return text


async def _call_batch(
    state: RpcState, batch: list[Any], authorized: bool, foreign: bool
) -> list[str | None]:
    """A batch's calls, concurrently, under one deadline for the whole batch: one timer, not
    one per call (a timer per call was ~19% of this layer's CPU on batches of 19 ``tx_submit``,
    the load generator's size at 1,500 tx/s). A call still running at the deadline is
    cancelled and answered TIMEOUT, as a single call is."""
    started = time.perf_counter()
    tasks = [
        asyncio.ensure_future(_call_one(state, r, authorized, foreign, timed=False)) for r in batch
    ]
    try:
        _, pending = await asyncio.wait(tasks, timeout=state.request_timeout_s)
    except asyncio.CancelledError:
        for t in tasks:
            t.cancel()
        raise
    for t in pending:
        t.cancel()
    parts: list[str | None] = []
    for req, t in zip(batch, tasks, strict=True):
        if t not in pending:
            parts.append(t.result())
            continue
        # Still running, so past its checks: an object with a valid id and a known method.
        _count(state, req["method"], "timeout", time.perf_counter() - started)
        if "id" in req:
            msg = f"request took longer than {state.request_timeout_s:g} s"
            parts.append(response(req["id"], error=error_obj(TIMEOUT, msg)))
    return parts


async def _read_body(request: web.Request, state: RpcState) -> bytes | web.Response:
    too_large = f"request body larger than {state.body_bytes_max} bytes"
    length = request.content_length
    if length is not None and length > state.body_bytes_max:
        resp = _http_error(413, INVALID_REQUEST, too_large)
        resp.force_close()  # do not read the rest of a body we refused
        return resp
    try:
        async with asyncio.timeout(state.request_timeout_s):
            return await request.read()  # bounded by client_max_size for chunked bodies
    except web.HTTPRequestEntityTooLarge:
        resp = _http_error(413, INVALID_REQUEST, too_large)
        resp.force_close()
        return resp
    except TimeoutError:
        resp = _http_error(408, TIMEOUT, "request body not received in time")
        resp.force_close()
        return resp


async def _handle_post(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    if state.inflight >= state.connections_max:
        _count(state, "unknown", "overloaded")
        return _http_error(503, OVERLOADED, "too many concurrent requests; retry later")
    state.inflight += 1
    try:
        return await _serve_post(request, state)
    finally:
        state.inflight -= 1


async def _serve_post(request: web.Request, state: RpcState) -> web.StreamResponse:
    if request.content_type not in JSON_CONTENT_TYPES:
        _count(state, "unknown", "rejected")
        return _http_error(415, INVALID_REQUEST, "Content-Type must be application/json")
    body = await _read_body(request, state)
    if isinstance(body, web.Response):
        _count(state, "unknown", "rejected")
        return body
    try:
        # Big bodies are parsed off the loop: a 4 MiB document costs the parser ~0.4 s.
        payload = (
            await asyncio.to_thread(parse_json, body)
            if len(body) > PARSE_INLINE_BYTES_MAX
            else parse_json(body)
        )
    except ValueError as exc:
        _count(state, "unknown", "invalid")
        return _json_reply(response(None, error=error_obj(PARSE_ERROR, f"parse error: {exc}")))
    authorized = bearer_ok(request.headers.get("Authorization"), state.admin_token)
    foreign = cross_origin(request)
    if isinstance(payload, list):
        if not payload:
            _count(state, "unknown", "invalid")
            return _json_reply(response(None, error=error_obj(INVALID_REQUEST, "empty batch")))
        if len(payload) > state.batch_max:
            _count(state, "unknown", "invalid")
            msg = f"batch of {len(payload)} requests exceeds the limit of {state.batch_max}"
            return _json_reply(response(None, error=error_obj(INVALID_REQUEST, msg)))
        parts = await _call_batch(state, payload, authorized, foreign)
        answered = [p for p in parts if p is not None]
        if not answered:
            return web.Response(status=204)
        return _json_reply("[" + ",".join(answered) + "]")
    one = await _call_one(state, payload, authorized, foreign)
    if one is None:
        return web.Response(status=204)
    return _json_reply(one)


def _json_reply(text: str) -> web.Response:
    return web.Response(text=text, content_type="application/json")


async def _handle_get_rpc(request: web.Request) -> web.Response:
    return _http_error(
        405,
        INVALID_REQUEST,
        "use HTTP POST with Content-Type: application/json (see docs/rpc.md)",
        Allow="POST",
    )


async def _handle_health(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        return web.json_response(state.service.health())
    except Exception:  # never a stack trace to a client
        log.exception("rpc_health_failed")
        return web.json_response({"error": "health unavailable"}, status=500)


async def _handle_ready(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        ready = bool(state.service.ready())
    except Exception:  # treat a failing check as not ready
        log.exception("rpc_ready_failed")
        ready = False
    return web.json_response({"ready": ready}, status=200 if ready else 503)


def make_rpc_app(
    service: NodeService,
    *,
    admin_token: str | None,
    body_bytes_max: int = 1_000_000,
    batch_max: int = 100,
    request_timeout_s: float = 10.0,
    connections_max: int = 512,
    metrics: Any = None,
    ws_config: WsConfig | None = None,
    cors_origins: tuple[str, ...] = (),
) -> web.Application:
    """The RPC application: POST ``/`` and ``/rpc``, GET ``/health``, ``/ready``, ``/ws`` and
    the operator console at ``/console`` (node/api/console.py).

    ``connections_max`` bounds concurrent HTTP requests (over it: 503 + OVERLOADED); websocket
    connections are bounded separately by ``ws_config.connections_max``.
    """
    if admin_token is not None and not admin_token:
        admin_token = None  # an empty token would let an empty bearer in
    middlewares: list[Middleware] = [cors_middleware(cors_origins)] if cors_origins else []
    app = web.Application(client_max_size=body_bytes_max, middlewares=middlewares)
    state = RpcState(
        service=service,
        admin_token=admin_token.encode() if admin_token is not None else None,
        body_bytes_max=body_bytes_max,
        batch_max=batch_max,
        request_timeout_s=request_timeout_s,
        connections_max=connections_max,
        metrics=metrics,
    )
    app[STATE_KEY] = state
    for path in ("/", "/rpc"):
        app.router.add_post(path, _handle_post)
        app.router.add_get(path, _handle_get_rpc, allow_head=False)
    app.router.add_get("/health", _handle_health)
    app.router.add_get("/ready", _handle_ready)
    hub = WsHub(service, ws_config or WsConfig())
    app.router.add_get("/ws", hub.handle)
    add_console_routes(app)
    app.on_shutdown.append(hub.on_shutdown)
    return app


async def start_rpc_server(
    app: web.Application,
    host: str,
    port: int,
    *,
    keepalive_timeout_s: float = 15.0,
    ssl_context: ssl.SSLContext | None = None,
) -> web.AppRunner:
    """Serve ``app`` on host:port with edge-friendly settings; returns the runner to clean up."""
    runner = web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=keepalive_timeout_s,
        handle_signals=False,
        shutdown_timeout=2.0,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, ssl_context=ssl_context)
    await site.start()
    return runner
