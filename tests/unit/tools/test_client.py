"""node/tools/client.py against the RPC app and a fake node: results, RpcError codes, batches."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from node import errors
from node.api.rpc import make_rpc_app
from node.tools.client import AsyncClient, Client, ClientError, RpcError
from tests.unit.api.test_rpc_fake import FakeService, signed_transfer
from tests.unit.tools.test_wallet_cli import fake_node  # noqa: F401 - pytest fixture


async def test_async_client_calls_and_errors() -> None:
    svc = FakeService()
    async with (
        TestServer(make_rpc_app(svc, admin_token="tok", batch_max=5), host="127.0.0.1") as srv,
        AsyncClient(str(srv.make_url("/"))) as c,
    ):
        assert (await c.node_status())["chain_id"] == "vigil-test"
        tx = signed_transfer()
        sub = await c.tx_submit(tx.encode())
        assert sub == {"hash": "0x" + tx.hash.hex(), "status": "pending"}
        assert (await c.tx_get(tx.hash))["amount"] == 5
        assert (await c.block_get())["height"] == 7
        assert (await c.account_get(b"\x01" * 20))["balance"] == 1000
        with pytest.raises(RpcError) as info:
            await c.tx_proof(tx.hash)
        assert (info.value.code, info.value.name) == (errors.NOT_FOUND, "not_found")
        with pytest.raises(RpcError) as info:
            await c.quarantine_list()
        assert info.value.code == errors.UNAUTHORIZED
        results = await c.batch(
            [("node_status", None), ("tx_get", ["0x00"]), ("mempool_status", {})]
        )
        assert results[0]["height"] == 7
        assert isinstance(results[1], RpcError)
        assert results[1].code == errors.INVALID_PARAMS
        assert results[2]["size"] == 1
        with pytest.raises(RpcError) as info:
            await c.batch([("node_status", None)] * 6)
        assert info.value.code == errors.INVALID_REQUEST
        assert await c.batch([]) == []
        info_tx = await c.wait_tx(tx.hash, statuses=("pending",), timeout_s=5)
        assert info_tx["status"] == "pending"
        with pytest.raises(ClientError, match="not committed"):
            await c.wait_tx(tx.hash, statuses=("committed",), timeout_s=0.2, poll_s=0.05)
    async with (
        TestServer(make_rpc_app(svc, admin_token="tok"), host="127.0.0.1") as srv,
        AsyncClient(str(srv.make_url("/")), admin_token="tok") as admin,
    ):
        assert len(await admin.quarantine_list(limit=1)) == 1


async def test_connection_errors_are_client_errors() -> None:
    async with AsyncClient("http://127.0.0.1:9") as c:
        with pytest.raises(ClientError, match="cannot reach node"):
            await c.node_status()
    async with aiohttp.ClientSession() as session:
        app = aiohttp.web.Application()
        async with TestServer(app, host="127.0.0.1") as srv:
            c = AsyncClient(str(srv.make_url("/")), session=session)
            with pytest.raises(ClientError, match="without JSON"):
                await c.node_status()  # 404 page from a server that is not a node


def test_sync_client(fake_node: tuple[FakeService, str]) -> None:  # noqa: F811
    svc, url = fake_node
    with Client(url) as c:
        assert c.node_status()["height"] == 7
        tx = signed_transfer(3)
        assert c.tx_submit(tx.encode())["status"] == "pending"
        with pytest.raises(RpcError):
            c.anchor_get(b"\x00" * 32)
    assert tx.hash in svc.txs
