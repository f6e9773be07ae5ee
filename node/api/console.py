"""The operator console: static files served at ``/console`` on the RPC port (docs/console.md).

The files ship in the package (``node/api/console/``) and are read once at start-up; nothing is
built at install time and nothing is fetched from elsewhere. The page uses relative URLs only, so
it works on a loopback RPC and behind a reverse proxy under any path prefix. A strict Content
Security Policy (scripts from this origin only, no inline script, no framing) backs up the page's
own rule of rendering data as text, never as HTML.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

CONSOLE_PACKAGE = "node.api"
CONSOLE_DIR = "console"
CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def load_console_files() -> dict[str, tuple[bytes, str]]:
    """Every shipped console file by its path under ``console/``: (bytes, content type)."""
    out: dict[str, tuple[bytes, str]] = {}
    root = resources.files(CONSOLE_PACKAGE).joinpath(CONSOLE_DIR)

    def walk(node: resources.abc.Traversable, prefix: str) -> None:
        for child in node.iterdir():
            name = prefix + child.name
            if child.is_dir():
                walk(child, name + "/")
                continue
            suffix = "." + child.name.rsplit(".", 1)[-1] if "." in child.name else ""
            ctype = CONTENT_TYPES.get(suffix)
            if ctype is not None:
                out[name] = (child.read_bytes(), ctype)

    if root.is_dir():
        walk(root, "")
    return out


def add_console_routes(app: web.Application) -> None:
    """GET ``/console`` (the page) and ``/console/<file>`` (its modules and styles)."""
    files = load_console_files()

    def reply(name: str) -> web.Response:
        found = files.get(name)
        if found is None:
            raise web.HTTPNotFound(text="no such console file\n")
        body, ctype = found
        charset = "utf-8" if ctype.startswith("text/") or ctype.endswith("+xml") else None
        return web.Response(
            body=body, content_type=ctype, charset=charset, headers=SECURITY_HEADERS
        )

    async def page(request: web.Request) -> web.Response:
        return reply("index.html")

    async def asset(request: web.Request) -> web.Response:
        # Only names present in the shipped set are served: no path is ever joined.
        return reply(request.match_info["name"])

    async def slash(request: web.Request) -> web.Response:
        # "/console/" would break the page's relative URLs: send the browser to "/console".
        raise web.HTTPMovedPermanently(location="../console")

    app.router.add_get("/console", page)
    app.router.add_get("/console/", slash)
    app.router.add_get("/console/{name:.+}", asset)
