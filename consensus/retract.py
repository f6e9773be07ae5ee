"""RETRACT bookkeeping: leaving a view change nobody joined (issue 11).

Which VIEW-CHANGEs each sender took back (persisted RETRACTs: they are void everywhere they are
stored), our epoch (stamped on our VIEW-CHANGEs; a RETRACT voids epochs at or below its own),
and our own RETRACT while it collects 2f+1 acknowledgments. ``Retraction`` owns that state;
``Retractor`` holds the transitions, moving views through consensus/viewchange_core.py's
``ViewChanger`` (a narrow ``ViewMoves``, so neither module imports the other's transitions).
"""

from __future__ import annotations

from typing import Protocol

from consensus import messages as m
from consensus.api import NULL_DIGEST, Action, Broadcast, Persist, Send, Validate, ViewChanged
from consensus.context import Context
from consensus.execution import Execution
from consensus.log import KEY_VIEW, SlotLog, retract_key, retract_record, view_record
from consensus.peers import PeerReports
from consensus.timers import ViewTimers
from consensus.viewchange import Selection, ViewChangeVotes
from consensus.views import ViewState

RETRACT_TRIES_MAX = 3  # RETRACT sends, a view-change timeout apart, before we give up on it


class Retraction:
    def __init__(self) -> None:
        self._retracted: dict[int, tuple[int, int]] = {}  # sender -> (view, epoch) it voided
        self._epoch = 0
        self._returned = -1  # the highest epoch of a RETRACT of ours we returned through
        self._returned_on_record: int | None = None  # as read from the view record at restart
        # RETRACTs heard while in the view change they leave: not acknowledged, not persisted;
        # only keep the VIEW-CHANGEs they void out of our count (sender -> (view, epoch)).
        self._heard: dict[int, tuple[int, int]] = {}
        self._pending: m.Retract | None = None  # our RETRACT waiting for 2f+1 acknowledgments
        self._acks: set[int] = set()
        self._tries = 0
        self._new_view: tuple[m.NewView, Selection] | None = None  # of the RETRACT's view

    def restore(self, sender: int, view: int, epoch: int) -> None:
        self._retracted[sender] = (view, epoch)

    def resume_epoch(self, me: int) -> None:
        """After a restart: our VIEW-CHANGEs must be above every RETRACT of ours."""
        mine = self._retracted.get(me)
        self._epoch = 0 if mine is None else mine[1] + 1
        if self._returned_on_record is None:
            # A view record from before "returned" was kept: assume we returned.
            self._returned = -1 if mine is None else mine[1]
        else:
            self._returned = self._returned_on_record

    def restore_returned(self, returned: int | None) -> None:
        """The epoch we last returned through, from the persisted view record (None: an older
        record that does not say)."""
        self._returned_on_record = returned

    @property
    def returned_epoch(self) -> int:
        return self._returned

    @property
    def epoch(self) -> int:
        return self._epoch

    def voids(self, vc: m.ViewChange) -> bool:
        """``vc`` is a VIEW-CHANGE its sender retracted (a RETRACT stored here)."""
        return _voided(self._retracted.get(vc.sender), vc)

    def voids_own(self, vc: m.ViewChange) -> bool:
        """Our own ``vc`` is void for us too once we returned through a RETRACT that voids it.

        Until then it still tells the truth: we sent it, have not been active in a view since,
        so have voted nowhere, and a NEW-VIEW built on it is as safe for us as one built on a
        fresh VIEW-CHANGE. (The others promised to refuse it; that is their business.) Refusing
        it left a replica whose RETRACT crossed the others' move into the view it left unable
        to enter that view, ever: the others' NEW-VIEW holds the retracted VIEW-CHANGE, and
        nobody acknowledges the RETRACT once they have left the view it returns to.
        """
        return self.voids(vc) and vc.epoch <= self._returned

    def hear(self, sender: int, view: int, epoch: int) -> None:
        """A RETRACT heard in the view change it leaves (in memory only, merged as stored)."""
        self._heard[sender] = _merged(self._heard.get(sender), view, epoch)

    def heard_voids(self, vc: m.ViewChange) -> bool:
        """``vc`` is voided by a RETRACT we only heard."""
        return _voided(self._heard.get(vc.sender), vc)

    def merge(self, sender: int, view: int, epoch: int) -> tuple[int, int] | None:
        """Store ``sender``'s RETRACT; the merged (view, epoch) to persist, None if nothing new.

        Several RETRACTs of one sender merge into (lowest view, highest epoch): that voids at
        least what each voids, and an honest sender's later VIEW-CHANGEs carry a higher epoch
        than any of its RETRACTs, so the merge never voids one it still relies on.
        """
        old = self._retracted.get(sender)
        new = _merged(old, view, epoch)
        if new == old:
            return None
        self._retracted[sender] = new
        return new

    # --- our own RETRACT --------------------------------------------------------------------------

    @property
    def pending(self) -> m.Retract | None:
        return self._pending

    def begin(self, rt: m.Retract) -> None:
        """Our RETRACT is out: our later VIEW-CHANGEs get a fresh epoch; we acknowledge it."""
        assert rt.epoch == self._epoch
        assert self._retracted.get(rt.sender, (0, -1))[1] >= rt.epoch
        self._epoch = rt.epoch + 1
        self._pending = rt
        self._acks = {rt.sender}
        self._new_view = None
        self._tries = 1

    def returned(self) -> None:
        """Our RETRACT holds (2f+1 acknowledgments): we vote again below what it voids."""
        assert self._pending is not None
        self._returned = max(self._returned, self._pending.epoch)

    def clear(self) -> None:
        self._pending = None
        self._acks = set()
        self._new_view = None

    def acknowledged(self, sender: int) -> bool:
        """Count ``sender``'s acknowledgment; False if it is a duplicate."""
        assert self._pending is not None
        if sender in self._acks:
            return False
        self._acks.add(sender)
        return True

    @property
    def acks(self) -> int:
        return len(self._acks)

    def retry(self) -> bool:
        """One more send of our RETRACT, unless we have tried often enough."""
        if self._tries >= RETRACT_TRIES_MAX:
            return False
        self._tries += 1
        return True

    def keep_new_view(self, nv: m.NewView, selection: Selection) -> None:
        self._new_view = (nv, selection)

    @property
    def new_view(self) -> tuple[m.NewView, Selection] | None:
        return self._new_view


def _merged(old: tuple[int, int] | None, view: int, epoch: int) -> tuple[int, int]:
    """Several RETRACTs of one sender as one: (lowest view, highest epoch)."""
    return (view, epoch) if old is None else (min(old[0], view), max(old[1], epoch))


def _voided(known: tuple[int, int] | None, vc: m.ViewChange) -> bool:
    """``vc`` is above the view and at or below the epoch of a (merged) RETRACT."""
    return known is not None and vc.view > known[0] and vc.epoch <= known[1]


class ViewMoves(Protocol):
    """What RETRACT needs from the view-change transitions (consensus/viewchange_core.py)."""

    @property
    def new_view(self) -> m.NewView | None: ...

    def start_view_change(self, view: int, out: list[Action], resend: bool = False) -> None: ...

    def enter_view(self, nv: m.NewView, selection: Selection, out: list[Action]) -> None: ...


class Retractor:
    """The RETRACT transitions, and following peers that report a later or an earlier view."""

    def __init__(
        self,
        ctx: Context,
        views: ViewState,
        log: SlotLog,
        timers: ViewTimers,
        peers: PeerReports,
        votes: ViewChangeVotes,
        execution: Execution,
        *,
        retract_when_alone: bool,
        refuse_retracted: bool,
        retract_quorum: int,
    ) -> None:
        self._ctx = ctx
        self._views = views
        self._log = log
        self._timers = timers
        self._peers = peers
        self._votes = votes
        self._execution = execution
        # Hooks: False builds a deliberately broken replica (the old rules) for the simulator.
        self._retract_when_alone = retract_when_alone
        self._refuse_retracted = refuse_retracted
        self._retract_quorum = retract_quorum  # acknowledgments (own included) we need: 2f+1
        self.state = Retraction()

    def follow_peers(self, moves: ViewMoves, out: list[Action]) -> None:
        """Act on what peers report (``PeerStatus``, signed messages of lower views); hints only.

        Behind: f+1 peers (so one honest) report a view above ours for half a view-change
        timeout: send VIEW-CHANGE for it; its primary answers with the NEW-VIEW
        (on_view_change), or the others' VIEW-CHANGEs pull us along. This closes the gap on an
        idle cluster, where no signed message of the later view reaches us (on_buffered covers
        the busy one).

        Alone: we have waited a view-change timeout in a view change that 2f+1 replicas did not
        join, while 2f peers still work in the view we left: take our VIEW-CHANGEs back
        (RETRACT) and return to that view once 2f+1 replicas acknowledged (on_retract_ack).
        Only to the view we left (``entered``): its NEW-VIEW and our votes in it are still
        here; a later view we never entered is reached the usual way.
        """
        ctx, views, timers = self._ctx, self._views, self._timers
        cfg = ctx.cfg
        now = ctx.now_ms
        target = self._peers.vouched_view(cfg.f, now - cfg.view_change_timeout_ms)
        if timers.behind_long_enough(now, target > views.view):
            return moves.start_view_change(target, out)
        self.retract_if_alone(moves, out)

    def retract_if_alone(self, moves: ViewMoves, out: list[Action]) -> bool:
        """RETRACT if we are alone (``follow_peers``); True if we did.

        Asked first when the view-change timer fires too (it fires as we become alone), so we
        never resend a VIEW-CHANGE to void it in the same breath: the resent one pulled peers
        into our view change and into a NEW-VIEW built on it, which the replicas that
        acknowledged the RETRACT then refused (simulator seeds 749, 3099).
        """
        ctx, views, timers = self._ctx, self._views, self._timers
        if views.active or timers.armed or self.state.pending is not None:
            return False
        if not self._retract_when_alone:
            return False
        if ctx.now_ms - timers.inactive_since_ms < ctx.cfg.view_change_timeout_ms:
            return False
        # Only reports made after we left count: they show peers that stayed behind.
        view = self._peers.common_view(views.view, ctx.quorum - 1, timers.inactive_since_ms + 1)
        if view is None or view < views.entered:
            return False
        self._send_retract(moves, view, out)
        return True

    def view_record(self, view: int, active: bool) -> bytes:
        """The persisted ``view`` record, with the epoch we last returned through."""
        return view_record(view, active, self._views.entered, self.state.returned_epoch)

    def is_void(self, vc: m.ViewChange) -> bool:
        """A VIEW-CHANGE its sender retracted (RETRACT persisted here): it may not count."""
        return self._refuse_retracted and self.state.voids(vc)

    def uncounted(self, vc: m.ViewChange) -> bool:
        """A VIEW-CHANGE we do not count: void, or voided by a RETRACT we only heard."""
        return self.is_void(vc) or (self._refuse_retracted and self.state.heard_voids(vc))

    def refused_in_new_view(self, vc: m.ViewChange) -> bool:
        """A VIEW-CHANGE that makes a NEW-VIEW invalid here: one its sender retracted, except
        our own while we have not returned through that RETRACT (``Retraction.voids_own``)."""
        if vc.sender == self._ctx.me:
            return self._refuse_retracted and self.state.voids_own(vc)
        return self.is_void(vc)

    def _store(self, sender: int, view: int, epoch: int) -> list[Action]:
        """Remember ``sender``'s RETRACT; the Persist to emit before anything relying on it."""
        merged = self.state.merge(sender, view, epoch)
        if merged is None:
            return []
        self._uncount(sender)
        return [Persist(((retract_key(sender), retract_record(*merged)),))]

    def _uncount(self, sender: int) -> None:
        """Forget ``sender``'s VIEW-CHANGE if we no longer count it; disarm below 2f+1."""
        vc = self._votes.get(sender)
        if vc is not None and self.uncounted(vc):
            self._votes.remove(sender)
            support = self._votes.support(self._views.view)
            if not self._views.active and self._timers.armed and support < self._ctx.quorum:
                self._timers.disarm(self._ctx.now_ms)

    def _send_retract(self, moves: ViewMoves, view: int, out: list[Action]) -> None:
        """Void our VIEW-CHANGEs above ``view`` (epoch and below); ask 2f replicas to confirm."""
        ctx, views = self._ctx, self._views
        assert not views.active
        assert views.entered <= view < views.view, "a RETRACT never returns below a view we entered"
        epoch = self.state.epoch
        rt = ctx.vote(m.Retract(view, epoch, ctx.me))
        out.extend(self._store(ctx.me, view, epoch))
        self.state.begin(rt)  # our VIEW-CHANGEs from now on are not void
        self._timers.disarm(ctx.now_ms)
        out.append(Broadcast(m.encode(rt)))
        if self._retract_quorum <= 1:
            self.maybe_return(moves, out)

    def retry(self, moves: ViewMoves, out: list[Action]) -> None:
        """No 2f+1 acknowledgments yet: resend a few times, then give up with a fresh VIEW-CHANGE
        (our old ones are void where the RETRACT was acknowledged) and wait a timeout again."""
        ctx, views = self._ctx, self._views
        rt = self.state.pending
        assert rt is not None
        since = max(ctx.now_ms - ctx.cfg.view_change_timeout_ms, self._timers.inactive_since_ms + 1)
        view = self._peers.common_view(views.view, ctx.quorum - 1, since)
        if view == rt.view and self.state.retry():
            out.append(Broadcast(m.encode(rt)))
            self._timers.wait(ctx.now_ms)
        else:
            moves.start_view_change(views.view, out, resend=True)

    def on_retract(self, moves: ViewMoves, rt: m.Retract, out: list[Action]) -> None:
        """Persist a peer's RETRACT; acknowledge it if we are active in the view it returns to
        (in the view change it leaves: only stop counting what it voids).

        Only a replica active in that view acknowledges: it was never active above it (a
        replica's active views never decrease), so it never entered a view whose NEW-VIEW used
        the retracted VIEW-CHANGEs, and from now on it refuses every such NEW-VIEW.
        """
        ctx, views = self._ctx, self._views
        if not views.active and views.view > rt.view:
            # In the view change it leaves: not acknowledged, not stored, but its VIEW-CHANGEs
            # no longer count here. As that view's primary we must not build the NEW-VIEW on
            # one the replicas that acknowledged refuse (they would be locked out of the view);
            # its sender sends a fresh one when a new VIEW-CHANGE for the view reaches it
            # (ViewChanger.on_view_change) or when it gives its RETRACT up (``retry``). A
            # NEW-VIEW from another primary holding one is not refused: we promised nothing.
            self.state.hear(rt.sender, rt.view, rt.epoch)
            self._uncount(rt.sender)
            return ctx.drop(out, "retract_not_in_view", rt.sender)
        if not (views.active and rt.view == views.view):
            # Not stored either: voiding its VIEW-CHANGEs here would only slow a view change.
            return ctx.drop(out, "retract_not_in_view", rt.sender)
        out.extend(self._store(rt.sender, rt.view, rt.epoch))
        ack = ctx.vote(m.RetractAck(rt.view, rt.epoch, rt.sender, ctx.me))
        out.append(Send(rt.sender, m.encode(ack)))
        nv = moves.new_view
        if nv is not None and nv.view == views.view and nv.sender == ctx.me:
            # It may never have entered this view: it returns through our NEW-VIEW.
            out.append(Send(rt.sender, m.encode(nv)))

    def on_retract_ack(self, moves: ViewMoves, ack: m.RetractAck, out: list[Action]) -> None:
        ctx = self._ctx
        rt = self.state.pending
        if rt is None or ack.target != ctx.me or (ack.view, ack.epoch) != (rt.view, rt.epoch):
            return ctx.drop(out, "stale_retract_ack", ack.sender)
        if not self.state.acknowledged(ack.sender):
            return ctx.drop(out, "duplicate", ack.sender)
        self.maybe_return(moves, out)

    def maybe_return(self, moves: ViewMoves, out: list[Action]) -> None:
        """With 2f+1 acknowledgments: back to the view we left, or into the later view the
        others work in through its NEW-VIEW (checked like any other, section 4.4)."""
        rt = self.state.pending
        if rt is None or self.state.acks < self._retract_quorum:
            return
        if rt.view == self._views.entered:
            return self._return_to_view(rt, out)
        pending = self.state.new_view
        if pending is None:
            return  # its primary sends it with its acknowledgment; or we give up on a timeout
        nv, selection = pending
        self.state.returned()
        self.state.clear()
        moves.enter_view(nv, selection, out)

    def _return_to_view(self, rt: m.Retract, out: list[Action]) -> None:
        """2f+1 replicas (us included) hold our RETRACT: resume the normal case in its view.

        Our own votes of that view are re-sent (same bytes), a verdict that came while we were
        away is asked for again; what we missed meanwhile comes by fetching.
        """
        ctx, views, log = self._ctx, self._views, self._log
        view = rt.view
        views.return_to(view)
        self.state.returned()
        self.state.clear()
        self._timers.entered_view()
        log.forget_requests()
        sends: list[Action] = []
        for slot in log.in_order():
            pp = slot.pre_prepare
            if pp is None or pp.view != view:
                continue
            slot.clear_votes()
            if pp.sender == ctx.me:
                log.advance(slot.seq + 1)
            if slot.prepare_sent:
                vote = ctx.vote(m.Prepare(view, slot.seq, pp.digest, ctx.me))
                slot.own_prepare(ctx.me, pp.digest, vote.sig)
                sends.append(Broadcast(m.encode(vote)))
            elif not (slot.validated or slot.rejected or pp.digest == NULL_DIGEST) and (
                slot.seq > self._execution.committed_seq
            ):
                sends.append(Validate(pp.view, pp.seq, pp.digest, pp.payload))
            if slot.commit_sent:
                commit = ctx.vote(m.CommitVote(view, slot.seq, pp.digest, ctx.me))
                slot.own_commit(ctx.me, pp.digest, commit.sig)
                sends.append(Broadcast(m.encode(commit)))
        out.append(Persist(((KEY_VIEW, self.view_record(view, True)),)))
        out.extend(sends)
        out.append(ViewChanged(view, ctx.primary(view)))
