"""The one Python client of the Vigil JSON-RPC API: async (aiohttp) and blocking (urllib).

Results are the JSON objects of docs/rpc.md, typed as TypedDicts. A JSON-RPC error raises
:class:`RpcError` carrying the code (see node/errors.py); a transport problem (refused, timeout,
not JSON) raises :class:`ClientError` with one readable line.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Sequence
from typing import Any, Generic, TypedDict, TypeVar

import aiohttp

from common.crypto import to_hex
from node.errors import ERROR_NAMES

DEFAULT_RPC_URL = "http://127.0.0.1:26700"  # scripts/cluster up: node 0 (base port + 100)
FINAL_STATUSES = ("committed", "rejected")


class ClientError(Exception):
    """The node could not be reached or answered something that is not JSON-RPC."""


class RpcError(Exception):
    """A JSON-RPC error answer."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message
        self.data = data

    @property
    def name(self) -> str:
        return ERROR_NAMES.get(self.code, "error")


class NodeStatus(TypedDict, total=False):
    chain_id: str
    node_id: Any
    version: str
    height: int
    head_hash: str
    view: int
    primary: int
    is_primary: bool
    validators: list[Any]
    peers: Any
    syncing: bool


class SubmitResult(TypedDict):
    hash: str
    status: str


class TxInfo(TypedDict, total=False):
    hash: str
    status: str
    height: int | None
    index: int | None
    kind: str
    anomaly: dict[str, Any]


class TxProof(TypedDict, total=False):
    height: int
    index: int
    tx_root: str
    branch: list[str]


class AnchorInfo(TypedDict):
    hash: str
    height: int
    index: int
    timestamp: int


class Account(TypedDict):
    address: str
    balance: int
    nonce: int


class BlockInfo(TypedDict, total=False):
    height: int
    hash: str
    prev_hash: str
    tx_root: str
    view: int
    proposer: int
    timestamp: int
    tx_hashes: list[str]
    certificate: Any


Call = tuple[str, Any]
R = TypeVar("R")


def _hex(value: bytes | str) -> str:
    return to_hex(value) if isinstance(value, bytes) else value


class _Codec:
    """JSON-RPC 2.0 requests and answers, shared by both transports."""

    def __init__(self, url: str, admin_token: str | None) -> None:
        self.url = url.rstrip("/") + "/"
        self.base = url.rstrip("/")
        self._headers = {"Content-Type": "application/json"}
        if admin_token:
            self._headers["Authorization"] = f"Bearer {admin_token}"
        self._ids = itertools.count(1)

    def _request(self, method: str, params: Any) -> dict[str, Any]:
        req: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self._ids), "method": method}
        if params is not None:
            req["params"] = params
        return req

    def _parse(self, status: int, text: str) -> Any:
        if status == 204:
            return None
        try:
            return json.loads(text)
        except ValueError:
            raise ClientError(f"node at {self.url} answered HTTP {status} without JSON")

    @staticmethod
    def _unwrap(answer: Any) -> Any:
        if not isinstance(answer, dict):
            raise ClientError("malformed JSON-RPC answer")
        if "error" in answer:
            err = answer["error"] if isinstance(answer["error"], dict) else {}
            raise RpcError(
                int(err.get("code", -32603)), str(err.get("message", "error")), err.get("data")
            )
        if "result" not in answer:
            raise ClientError("malformed JSON-RPC answer")
        return answer["result"]

    def _split_batch(self, reqs: list[dict[str, Any]], answer: Any) -> list[Any]:
        """Each slot of a batch answer: its result, the RpcError it carried, or a ClientError."""
        if isinstance(answer, dict):  # the whole batch was refused (size limit, parse error)
            self._unwrap(answer)
            raise ClientError("malformed JSON-RPC batch answer")
        if not isinstance(answer, list):
            raise ClientError("malformed JSON-RPC batch answer")
        by_id = {a.get("id"): a for a in answer if isinstance(a, dict)}
        out: list[Any] = []
        for req in reqs:
            try:
                out.append(self._unwrap(by_id.get(req["id"])))
            except (RpcError, ClientError) as exc:
                out.append(exc)
        return out


class _Methods(Generic[R]):
    """The typed methods of docs/rpc.md, written once for both transports.

    ``call`` returns the result (blocking ``Client``) or an awaitable of it (``AsyncClient``).
    """

    def call(self, method: str, params: Any = None) -> R:
        raise NotImplementedError

    def node_status(self) -> R:
        return self.call("node_status")

    def tx_submit(self, raw: bytes) -> R:
        return self.call("tx_submit", {"tx": to_hex(raw)})

    def tx_get(self, tx_hash: bytes | str) -> R:
        return self.call("tx_get", {"hash": _hex(tx_hash)})

    def tx_proof(self, tx_hash: bytes | str) -> R:
        return self.call("tx_proof", {"hash": _hex(tx_hash)})

    def anchor_get(self, digest: bytes | str) -> R:
        return self.call("anchor_get", {"digest": _hex(digest)})

    def account_get(self, address: bytes | str) -> R:
        return self.call("account_get", {"address": _hex(address)})

    def block_get(self, height: int | None = None) -> R:
        return self.call("block_get", {"height": "latest" if height is None else height})

    def mempool_status(self) -> R:
        return self.call("mempool_status")

    def detector_status(self) -> R:
        return self.call("detector_status")

    def quarantine_list(self, limit: int = 100) -> R:
        return self.call("quarantine_list", {"limit": limit})

    def quarantine_release(self, tx_hash: bytes | str) -> R:
        return self.call("quarantine_release", {"hash": _hex(tx_hash)})

    def quarantine_reject(self, tx_hash: bytes | str) -> R:
        return self.call("quarantine_reject", {"hash": _hex(tx_hash)})

    def quarantine_show(self, tx_hash: bytes | str) -> R:
        return self.call("quarantine_show", {"hash": _hex(tx_hash)})

    def detector_explain(self, tx_hash: bytes | str) -> R:
        return self.call("detector_explain", {"hash": _hex(tx_hash)})


class AsyncClient(_Codec, _Methods[Awaitable[Any]]):
    """``async with AsyncClient(url) as c: await c.node_status()``."""

    def __init__(
        self,
        url: str = DEFAULT_RPC_URL,
        *,
        admin_token: str | None = None,
        timeout_s: float = 10.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        super().__init__(url, admin_token)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
            self._owns_session = True
        return self._session

    async def _get(self, url: str, payload: Any = None) -> tuple[int, str]:
        try:
            if payload is None:
                async with self._sess().get(url) as resp:
                    return resp.status, await resp.text()
            async with self._sess().post(
                url, data=json.dumps(payload), headers=self._headers
            ) as resp:
                return resp.status, await resp.text()
        except (aiohttp.ClientError, OSError) as exc:
            raise ClientError(f"cannot reach node at {self.url}: {exc or type(exc).__name__}")
        except TimeoutError:
            raise ClientError(f"node at {self.url} did not answer in time")

    async def _post(self, payload: Any) -> Any:
        return self._parse(*await self._get(self.url, payload))

    async def call(self, method: str, params: Any = None) -> Any:
        """One call; returns its result or raises RpcError / ClientError."""
        return self._unwrap(await self._post(self._request(method, params)))

    async def batch(self, calls: Sequence[Call]) -> list[Any]:
        """One HTTP request for many calls; each slot holds a result or an error instance."""
        if not calls:
            return []
        reqs = [self._request(m, p) for m, p in calls]
        return self._split_batch(reqs, await self._post(reqs))

    async def health(self, path: str = "/health") -> Any:
        """GET /health (or /ready): the JSON body; ClientError when it is not served."""
        return self._parse(*await self._get(self.base + path))

    async def wait_tx(
        self,
        tx_hash: bytes | str,
        statuses: Sequence[str] = FINAL_STATUSES,
        timeout_s: float = 30.0,
        poll_s: float = 0.1,
    ) -> TxInfo:
        """Poll tx_get until the status is one of ``statuses``; ClientError after the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                info: TxInfo = await self.tx_get(tx_hash)
                if info.get("status") in statuses:
                    return info
            except RpcError as exc:
                if exc.name != "not_found":
                    raise
            if time.monotonic() >= deadline:
                raise ClientError(f"tx {_hex(tx_hash)} not {'/'.join(statuses)} in {timeout_s:g} s")
            await asyncio.sleep(poll_s)


class Client(_Codec, _Methods[Any]):
    """Blocking client over urllib: no event loop, safe to share between threads.

    ``Client(url).node_status()``; the tools, the cluster scripts and the tests' cluster helper
    use it, the wallet commands use :class:`AsyncClient`.
    """

    def __init__(
        self,
        url: str = DEFAULT_RPC_URL,
        *,
        admin_token: str | None = None,
        timeout_s: float = 10.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(url, admin_token)
        self.timeout_s = timeout_s
        # Never an environment proxy: a node's RPC is local or named explicitly. ``tls`` pins
        # or relaxes certificate checks for https URLs (a node's self-signed certificate).
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if tls is not None:
            handlers.append(urllib.request.HTTPSHandler(context=tls))
        self._opener = urllib.request.build_opener(*handlers)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release (one connection per request); kept for symmetry."""

    def _get(
        self, url: str, payload: Any = None, timeout_s: float | None = None
    ) -> tuple[int, str]:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(url, data=data, headers=self._headers)
        try:
            with self._opener.open(req, timeout=timeout_s or self.timeout_s) as resp:
                return int(resp.status), resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            with exc:  # an error answer still holds the connection: close it
                return int(exc.code), exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc or type(exc).__name__
            raise ClientError(f"cannot reach node at {self.url}: {reason}")

    def call(self, method: str, params: Any = None) -> Any:
        """One call; returns its result or raises RpcError / ClientError."""
        return self._unwrap(self.post(self._request(method, params)))

    def post(self, payload: Any, timeout_s: float | None = None) -> Any:
        """POST any JSON body and return the parsed answer as sent (for conformance tests)."""
        return self._parse(*self._get(self.url, payload, timeout_s))

    def batch(self, calls: Sequence[Call], timeout_s: float | None = None) -> list[Any]:
        """One HTTP request for many calls; each slot holds a result or an error instance."""
        if not calls:
            return []
        reqs = [self._request(m, p) for m, p in calls]
        return self._split_batch(reqs, self.post(reqs, timeout_s))

    def health(self, path: str = "/health") -> Any:
        """GET /health (or /ready): the JSON body; ClientError when it is not served."""
        return self._parse(*self._get(self.base + path))

    def status_code(self, path: str) -> int:
        """The HTTP status of ``GET {base}{path}`` (e.g. 200 or 503 for /ready)."""
        return self._get(self.base + path)[0]

    def wait_tx(
        self,
        tx_hash: bytes | str,
        statuses: Sequence[str] = FINAL_STATUSES,
        timeout_s: float = 30.0,
        poll_s: float = 0.1,
    ) -> TxInfo:
        """Poll tx_get until the status is one of ``statuses``; ClientError after the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                info: TxInfo = self.tx_get(tx_hash)
                if info.get("status") in statuses:
                    return info
            except RpcError as exc:
                if exc.name != "not_found":
                    raise
            if time.monotonic() >= deadline:
                raise ClientError(f"tx {_hex(tx_hash)} not {'/'.join(statuses)} in {timeout_s:g} s")
            time.sleep(poll_s)
