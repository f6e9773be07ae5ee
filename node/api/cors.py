"""CORS for browser wallets: only origins in ``rpc.cors_origins`` may call the RPC from a page.

An allowed origin gets ``Access-Control-Allow-Origin`` echoed back (with ``Vary: Origin``) and
its preflight answered; any other origin gets no CORS headers, so the browser keeps the answer
from the page. ``Authorization`` is not an allowed request header: admin methods stay out of
reach of other sites even when a wallet's origin is allowed: a preflight asking for it is
refused (403), and a cross-origin request that carries it anyway (a non-browser client forging
``Origin``, or a browser bug) gets no CORS headers and is refused by the RPC layer's same-origin
rule for admin methods (node/api/rpc.py) with a JSON-RPC error before any method runs. Same-origin
pages (the operator console at ``/console``) are unaffected. ``"*"`` allows every origin.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PREFLIGHT_MAX_AGE_S = 600
ADMIN_CROSS_ORIGIN = "admin methods are not callable cross-origin (no Authorization header)\n"


def cors_middleware(origins: tuple[str, ...]) -> Middleware:
    allowed = frozenset(origins)

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        ok = origin is not None and ("*" in allowed or origin in allowed)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            if not ok:
                return web.Response(status=403, text="origin not allowed\n")
            asked = request.headers.get("Access-Control-Request-Headers", "").lower()
            if "authorization" in (h.strip() for h in asked.split(",")):
                return web.Response(status=403, text=ADMIN_CROSS_ORIGIN)
            return web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Origin": origin or "",
                    "Access-Control-Allow-Methods": "POST, GET, OPTIONS",
                    "Access-Control-Allow-Headers": "Content-Type",
                    "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
                    "Vary": "Origin",
                },
            )
        response = await handler(request)
        bearer = "Authorization" in request.headers  # never readable by another site's page
        if ok and origin is not None and not bearer and not response.prepared:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    return cors
