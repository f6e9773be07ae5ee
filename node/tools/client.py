"""Python client of the Vigil JSON-RPC API: async (aiohttp) with a small sync wrapper.

Results are the JSON objects of docs/rpc.md, typed as TypedDicts. A JSON-RPC error raises
:class:`RpcError` carrying the code (see node/errors.py); a transport problem (refused, timeout,
not JSON) raises :class:`ClientError` with one readable line.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any, TypedDict

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


def _hex(value: bytes | str) -> str:
    return to_hex(value) if isinstance(value, bytes) else value


class AsyncClient:
    """``async with AsyncClient(url) as c: await c.node_status()``."""

    def __init__(
        self,
        url: str = DEFAULT_RPC_URL,
        *,
        admin_token: str | None = None,
        timeout_s: float = 10.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = url.rstrip("/") + "/"
        self._headers = {"Content-Type": "application/json"}
        if admin_token:
            self._headers["Authorization"] = f"Bearer {admin_token}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session
        self._owns_session = session is None
        self._next_id = 0

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

    async def _post(self, payload: Any) -> Any:
        try:
            async with self._sess().post(
                self.url, data=json.dumps(payload), headers=self._headers
            ) as resp:
                text = await resp.text()
                if resp.status == 204:
                    return None
        except (aiohttp.ClientError, OSError) as exc:
            raise ClientError(f"cannot reach node at {self.url}: {exc or type(exc).__name__}")
        except TimeoutError:
            raise ClientError(f"node at {self.url} did not answer in time")
        try:
            return json.loads(text)
        except ValueError:
            raise ClientError(f"node at {self.url} answered HTTP {resp.status} without JSON")

    def _request(self, method: str, params: Any) -> dict[str, Any]:
        self._next_id += 1
        req: dict[str, Any] = {"jsonrpc": "2.0", "id": self._next_id, "method": method}
        if params is not None:
            req["params"] = params
        return req

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

    async def call(self, method: str, params: Any = None) -> Any:
        """One call; returns its result or raises RpcError / ClientError."""
        return self._unwrap(await self._post(self._request(method, params)))

    async def batch(self, calls: Sequence[Call]) -> list[Any]:
        """One HTTP request for many calls; each slot holds a result or an RpcError instance."""
        if not calls:
            return []
        reqs = [self._request(m, p) for m, p in calls]
        answer = await self._post(reqs)
        if isinstance(answer, dict):  # the whole batch was refused (size limit, parse error)
            self._unwrap(answer)
            raise ClientError("malformed JSON-RPC batch answer")
        if not isinstance(answer, list):
            raise ClientError("malformed JSON-RPC batch answer")
        by_id = {a.get("id"): a for a in answer if isinstance(a, dict)}
        out: list[Any] = []
        for req in reqs:
            a = by_id.get(req["id"])
            try:
                out.append(self._unwrap(a))
            except RpcError as exc:
                out.append(exc)
        return out

    # --- typed methods (CONTRACT.md section 2) ---

    async def node_status(self) -> NodeStatus:
        return await self.call("node_status")  # type: ignore[no-any-return]

    async def tx_submit(self, raw: bytes) -> SubmitResult:
        return await self.call("tx_submit", {"tx": to_hex(raw)})  # type: ignore[no-any-return]

    async def tx_get(self, tx_hash: bytes | str) -> TxInfo:
        return await self.call("tx_get", {"hash": _hex(tx_hash)})  # type: ignore[no-any-return]

    async def tx_proof(self, tx_hash: bytes | str) -> TxProof:
        return await self.call("tx_proof", {"hash": _hex(tx_hash)})  # type: ignore[no-any-return]

    async def anchor_get(self, digest: bytes | str) -> AnchorInfo:
        return await self.call("anchor_get", {"digest": _hex(digest)})  # type: ignore[no-any-return]

    async def account_get(self, address: bytes | str) -> Account:
        return await self.call("account_get", {"address": _hex(address)})  # type: ignore[no-any-return]

    async def block_get(self, height: int | None = None) -> BlockInfo:
        h: int | str = "latest" if height is None else height
        return await self.call("block_get", {"height": h})  # type: ignore[no-any-return]

    async def mempool_status(self) -> dict[str, Any]:
        return await self.call("mempool_status")  # type: ignore[no-any-return]

    async def detector_status(self) -> dict[str, Any]:
        return await self.call("detector_status")  # type: ignore[no-any-return]

    async def quarantine_list(self, limit: int = 100) -> list[dict[str, Any]]:
        return await self.call("quarantine_list", {"limit": limit})  # type: ignore[no-any-return]

    async def quarantine_release(self, tx_hash: bytes | str) -> dict[str, Any]:
        return await self.call("quarantine_release", {"hash": _hex(tx_hash)})  # type: ignore[no-any-return]

    async def quarantine_reject(self, tx_hash: bytes | str) -> dict[str, Any]:
        return await self.call("quarantine_reject", {"hash": _hex(tx_hash)})  # type: ignore[no-any-return]

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
                info = await self.tx_get(tx_hash)
                if info.get("status") in statuses:
                    return info
            except RpcError as exc:
                if exc.name != "not_found":
                    raise
            if time.monotonic() >= deadline:
                raise ClientError(f"tx {_hex(tx_hash)} not {'/'.join(statuses)} in {timeout_s:g} s")
            await asyncio.sleep(poll_s)


class Client:
    """Blocking wrapper: ``Client(url).node_status()``; runs its own event loop."""

    def __init__(self, url: str = DEFAULT_RPC_URL, **kwargs: Any) -> None:
        self._runner = asyncio.Runner()
        self._async = AsyncClient(url, **kwargs)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._runner.run(self._async.close())
        finally:
            self._runner.close()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._async, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def sync(*args: Any, **kwargs: Any) -> Any:
            return self._runner.run(attr(*args, **kwargs))

        return sync
