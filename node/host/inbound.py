"""What peers send us: consensus frames to the core, txs to admission, status to the watchers.

``PeerInbound`` holds the three P2P callbacks (node/net/p2p.py ``on_frame``, ``on_request``,
``on_peer``) and routes each frame to the part that owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from consensus.api import PeerStatus, Received
from node.host.admission import Admission
from node.host.driver import Status
from node.host.ports import PeerSender
from node.host.resolver import TxResolver
from node.host.screening import Screening
from node.host.signals import Inbox
from node.host.txflow import TxFlow
from node.net.catchup import CatchUp
from node.net.peerwatch import PeerWatch

STATUS_VALUE_MAX = 2**63 - 1


class PeerInbound:
    def __init__(
        self,
        *,
        inbox: Inbox,
        admission: Admission,
        screening: Screening,
        flow: TxFlow,
        txs: TxResolver,
        watch: PeerWatch,
        catchup: CatchUp,
        status: Status,
        p2p: PeerSender,
        pipeline_depth: int,
    ) -> None:
        self.inbox = inbox
        self.admission = admission
        self.screening = screening
        self.flow = flow
        self.txs = txs
        self.watch = watch
        self.catchup = catchup
        self.status = status
        self.p2p = p2p
        self.pipeline_depth = pipeline_depth

    async def on_frame(self, sender: int, frame: dict[str, Any]) -> None:
        kind = frame["t"]
        if kind == "c":
            await self.inbox.put(Received(sender, frame["d"]))
        elif kind == "txs":
            if frame.get("released") is True:  # released by a peer's operator: not screened
                self.screening.on_peer_release(frame["txs"])
            dropped = frame.get("dropped")
            if isinstance(dropped, list):  # a peer's held tx left its quarantine for good
                self.flow.on_peer_dropped(dropped)
            if frame["txs"]:
                self.admission.gossiped(frame["txs"], sender)
        elif kind == "status":
            self.on_peer_status(sender, frame["height"], frame["view"])

    async def on_request(self, sender: int, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        if kind == "get_txs":
            return await self.txs.serve_get_txs(body)
        if kind == "get_blocks":
            return await self.txs.serve_get_blocks(body)
        return {"error": "unknown_request"}

    def on_peer(self, peer: int, up: bool) -> None:
        if up:
            self.p2p.send(peer, self.status.frame())
            self.flow.regossip(peer)
        else:
            self.catchup.peer_heights.pop(peer, None)
            self.watch.forget(peer)

    def on_peer_status(self, sender: int, height: int, view: int) -> None:
        """A peer's status frame: to the watch, to catch-up, and to the core as ``PeerStatus``."""
        if not (0 <= height <= STATUS_VALUE_MAX and 0 <= view <= STATUS_VALUE_MAX):
            return  # garbage from a peer (wire.py checked only the types)
        self.watch.on_status(sender, height, view)
        self.catchup.on_status(sender, height, slack=2 * self.pipeline_depth)
        with contextlib.suppress(asyncio.QueueFull):  # a hint: the next frame comes in a second
            self.inbox.put_nowait(PeerStatus(sender, height, view))
