"""View changes (Castro and Liskov, OSDI 1999, sections 4.4-4.5.2), RETRACT (leaving a view change
nobody joined, issue 11) and following peers to a later view.

The transitions; what they remember lives in owners: the VIEW-CHANGE votes
(consensus/viewchange.py), our RETRACT and others' (consensus/retract.py), our view
(consensus/views.py) and the timers (consensus/timers.py). Checking messages and computing a
NEW-VIEW's content are pure functions in consensus/viewchange.py.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from common import codec
from consensus import messages as m
from consensus.api import (
    Action,
    Broadcast,
    Persist,
    Reproposed,
    Send,
    ViewChanged,
)
from consensus.checkpoint import CheckpointTracker
from consensus.context import Context
from consensus.execution import Execution
from consensus.log import (
    KEY_NEW_VIEW,
    KEY_VIEW,
    SlotLog,
    slot_key,
)
from consensus.peers import PeerReports
from consensus.retract import Retractor
from consensus.timers import ViewTimers
from consensus.viewchange import (
    Selection,
    ViewChangeVotes,
    new_view_problem,
    select,
    view_change_problem,
)
from consensus.views import FutureBuffer, ViewState

Dispatch = Callable[[m.SlotMessage, list[Action]], None]


class ViewChanger:
    """Moving between views; owns the VIEW-CHANGE votes, RETRACTs and the NEW-VIEW we entered by."""

    def __init__(
        self,
        ctx: Context,
        rng: random.Random,
        views: ViewState,
        log: SlotLog,
        checkpoints: CheckpointTracker,
        timers: ViewTimers,
        peers: PeerReports,
        future: FutureBuffer,
        execution: Execution,
        dispatch: Dispatch,
        *,
        use_prepared: bool,
        retract_when_alone: bool,
        refuse_retracted: bool,
        retract_quorum: int,
    ) -> None:
        self._ctx = ctx
        self._rng = rng  # the back-off jitter
        self._views = views
        self._log = log
        self._checkpoints = checkpoints
        self._timers = timers
        self._peers = peers
        self._future = future
        self._execution = execution
        self._dispatch = dispatch  # re-feeds buffered messages once we enter their view
        self._use_prepared = use_prepared  # False: a broken test variant (null for everything)
        self._votes = ViewChangeVotes()
        self._retractor = Retractor(
            ctx,
            views,
            log,
            timers,
            peers,
            self._votes,
            execution,
            retract_when_alone=retract_when_alone,
            refuse_retracted=refuse_retracted,
            retract_quorum=retract_quorum,
        )
        self._new_view: m.NewView | None = None  # the NEW-VIEW of the view we entered last

    @property
    def new_view(self) -> m.NewView | None:
        return self._new_view

    # --- restart ----------------------------------------------------------------------------

    def restore_retraction(self, sender: int, view: int, epoch: int) -> None:
        self._retractor.state.restore(sender, view, epoch)

    def restore_returned(self, returned: int | None) -> None:
        self._retractor.state.restore_returned(returned)

    def restore(self, new_view: bytes | None) -> None:
        """After the records are read: our epoch, and our persisted NEW-VIEW if it is of the view
        we restarted in (active), so we can still hand it to laggards."""
        ctx, views = self._ctx, self._views
        self._retractor.state.resume_epoch(ctx.me)
        if new_view is None or not views.active:
            return
        cfg = ctx.cfg
        try:
            nv = m.decode(
                new_view, cfg.payload_bytes_max, max(len(new_view), cfg.message_bytes_max)
            )
        except codec.CodecError:
            return
        if isinstance(nv, m.NewView) and nv.view == views.view and nv.sender == ctx.me:
            self._new_view = nv

    # --- VIEW-CHANGE --------------------------------------------------------------------------

    def start_view_change(self, view: int, out: list[Action], resend: bool = False) -> None:
        """Move to ``view``: stop the normal case, broadcast VIEW-CHANGE, arm the back-off timer."""
        ctx, views, log, checkpoints = self._ctx, self._views, self._log, self._checkpoints
        views.begin_change(view, resend)
        self._retractor.state.clear()
        log.forget_requests()
        log.clear_votes()
        vc = ctx.vote(
            m.ViewChange(
                view,
                checkpoints.stable_seq,
                checkpoints.stable_digest,
                checkpoints.stable_proof,
                log.prepared(checkpoints.in_window),
                ctx.me,
                epoch=self._retractor.state.epoch,
            )
        )
        self._votes.put(vc)
        out.append(Persist(((KEY_VIEW, self._retractor.view_record(view, False)),)))
        out.append(Broadcast(m.encode(vc)))
        own_cp = checkpoints.own_unstable
        if own_cp is not None:
            # Lost CHECKPOINTs would freeze the watermarks forever; resending them is cheap.
            out.append(Broadcast(m.encode(own_cp)))
        self._timers.left_view(ctx.now_ms, self._rng)
        self._arm_timer()
        self._try_new_view(out)

    def _arm_timer(self) -> None:
        """Section 4.5.2: the new-view timer runs only once 2f+1 replicas gave up on our view.

        Counting VIEW-CHANGEs for *higher* views too lets laggards catch up, while a replica that
        ran ahead waits for them instead of drifting further ahead in step with them.
        """
        if self._views.active or self._timers.armed:
            return
        if self._votes.support(self._views.view) >= self._ctx.quorum:
            self._timers.arm(self._ctx.now_ms)

    def on_view_change_timer(self, out: list[Action]) -> None:
        """The NEW-VIEW did not come: try the next view, or (not armed yet) resend VIEW-CHANGE."""
        if self._timers.armed:
            return self.start_view_change(self._views.view + 1, out)
        if self._retractor.state.pending is not None:
            return self._retractor.retry(self, out)
        if self._retractor.retract_if_alone(self, out):
            return None
        own = self._votes.get(self._ctx.me)
        if own is not None and own.view == self._views.view:
            out.append(Broadcast(m.encode(own)))
        self._timers.wait(self._ctx.now_ms)

    def on_view_change(self, vc: m.ViewChange, out: list[Action]) -> None:
        ctx, views = self._ctx, self._views
        if vc.view < views.view or (vc.view == views.view and views.active):
            nv = self._new_view
            if views.active and nv is not None and nv.view == views.view and nv.sender == ctx.me:
                # The sender missed our NEW-VIEW; it is self-certifying, so hand it over.
                out.append(Send(vc.sender, m.encode(nv)))
            return ctx.drop(out, "old_view", vc.sender)
        if self._retractor.uncounted(vc):
            return ctx.drop(out, "retracted_view_change", vc.sender)
        reason = self._votes.stale(vc)
        if reason is not None:
            return ctx.drop(out, reason, vc.sender)
        problem = view_change_problem(vc, ctx.cfg, ctx.quorum, ctx.verify)
        if problem is not None:
            return ctx.drop(out, problem, vc.sender)
        self._votes.put(vc)
        # Section 4.5.2: f+1 replicas asking for higher views cannot all be faulty, so join them.
        target = self._votes.vouched_view(views.view, ctx.cfg.f, ctx.me)
        if target is not None:
            self.start_view_change(target, out)
        else:
            if self._retractor.state.pending is not None and vc.view >= views.view:
                # Someone is coming to our view after all: count again, with a fresh VIEW-CHANGE
                # (our old one is void at whoever took our RETRACT).
                self.start_view_change(views.view, out, resend=True)
            self._arm_timer()
            self._try_new_view(out)

    def on_buffered(self, out: list[Action]) -> None:
        """f+1 senders already vote in a later view: ask for its NEW-VIEW (section 4.5.2).

        An honest replica sends PRE-PREPARE/PREPARE/COMMIT of a view only after entering it, so
        f+1 distinct (signature-checked) senders prove a NEW-VIEW exists for the (f+1)-th highest
        of their views. A replica that missed it (down during the view change, or its NEW-VIEW
        lost) would otherwise follow by catch-up without ever voting: under load every fetched
        commit resets its request timer, so it never times out, and the cluster stays one
        failure away from a stall. Its VIEW-CHANGE for that view is answered by the view's
        primary with the NEW-VIEW (on_view_change), or the others' VIEW-CHANGEs pull it along.
        """
        target = self._future.vouched_view(self._ctx.cfg.f, self._ctx.me)
        if target > self._views.view:
            self.start_view_change(target, out)

    # --- RETRACT and peers' reports (consensus/retract.py) -----------------------------------

    def follow_peers(self, out: list[Action]) -> None:
        self._retractor.follow_peers(self, out)

    def on_retract(self, rt: m.Retract, out: list[Action]) -> None:
        self._retractor.on_retract(self, rt, out)

    def on_retract_ack(self, ack: m.RetractAck, out: list[Action]) -> None:
        self._retractor.on_retract_ack(self, ack, out)

    # --- NEW-VIEW -----------------------------------------------------------------------------

    def _try_new_view(self, out: list[Action]) -> None:
        """As the new primary with 2f+1 VIEW-CHANGEs for our view, send NEW-VIEW and enter it."""
        ctx, view = self._ctx, self._views.view
        own = self._votes.get(ctx.me)
        if self._views.active or ctx.primary(view) != ctx.me or own is None or own.view != view:
            return
        others = self._votes.others_for(view, ctx.me)
        if len(others) + 1 < ctx.quorum:
            return
        chosen = sorted([own, *others[: ctx.quorum - 1]], key=lambda vc: vc.sender)
        selection = select(chosen, self._use_prepared)
        pre_prepares = tuple(
            ctx.vote(m.PrePrepare(view, seq, digest, payload, ctx.me))
            for seq, digest, payload in selection.entries
        )
        nv = ctx.vote(m.NewView(view, tuple(chosen), pre_prepares, ctx.me))
        self._enter_view(nv, selection, out, Broadcast(m.encode(nv)))

    def on_new_view(self, nv: m.NewView, out: list[Action]) -> None:
        """Check a NEW-VIEW the way section 4.4 asks: recompute its PRE-PREPAREs from its proof."""
        views = self._views
        rt = self._retractor.state.pending
        if rt is not None and nv.view == rt.view and rt.view > views.entered:
            # The view our RETRACT returns to, which we never entered: keep it for the return.
            selection = self._check_new_view(nv, out)
            if selection is not None:
                self._retractor.state.keep_new_view(nv, selection)
                self._retractor.maybe_return(self, out)
            return None
        if nv.view < views.view or (nv.view == views.view and views.active):
            return self._ctx.drop(out, "old_view", nv.sender)
        selection = self._check_new_view(nv, out)
        if selection is not None:
            self._enter_view(nv, selection, out, None)
        return None

    def _check_new_view(self, nv: m.NewView, out: list[Action]) -> Selection | None:
        """The NEW-VIEW's selection if it is valid (section 4.4), else None (and a Dropped)."""
        ctx = self._ctx
        found = new_view_problem(
            nv,
            ctx.cfg,
            ctx.quorum,
            ctx.verify,
            checked=lambda vc: self._votes.get(vc.sender) == vc,
            void=self._retractor.refused_in_new_view,
            use_prepared=self._use_prepared,
        )
        if isinstance(found, str):
            ctx.drop(out, found, nv.sender)
            return None
        return found

    def enter_view(self, nv: m.NewView, selection: Selection, out: list[Action]) -> None:
        """Enter the view of a NEW-VIEW someone else sent (checked already)."""
        self._enter_view(nv, selection, out, None)

    def _enter_view(
        self, nv: m.NewView, selection: Selection, out: list[Action], announce: Action | None
    ) -> None:
        """Start the normal case in ``nv.view`` with the NEW-VIEW's PRE-PREPAREs accepted."""
        ctx, log, checkpoints = self._ctx, self._log, self._checkpoints
        view = nv.view
        # A RETRACT of ours still waiting is moot: its acknowledgments must not take us back
        # below a view we were active in (active views never decrease).
        self._retractor.state.clear()
        self._views.enter(view)
        self._timers.entered_view()
        self._new_view = nv
        log.forget_requests()
        if selection.stable_seq > checkpoints.stable_seq:
            self._execution.adopt_stable(
                selection.stable_seq, selection.stable_digest, selection.stable_proof, out
            )
        log.clear_votes()
        records: list[tuple[bytes, bytes | None]] = [
            (KEY_VIEW, self._retractor.view_record(view, True))
        ]
        if nv.sender == ctx.me:
            # Only the primary answers a laggard's VIEW-CHANGE with its NEW-VIEW
            # (on_view_change); without this record a restart would leave it nothing to answer.
            records.append((KEY_NEW_VIEW, m.encode(nv)))
        sends: list[Action] = []
        backup = ctx.primary(view) != ctx.me
        for pp in nv.pre_prepares:
            if pp.seq <= checkpoints.stable_seq:
                continue
            slot = log.slot(pp.seq)
            if slot.committed is not None and slot.committed.digest != pp.digest:
                ctx.drop(out, "new_view_conflicts_commit", nv.sender)
                continue
            slot.accept(pp, validated=True)
            if backup:
                vote = ctx.vote(m.Prepare(view, pp.seq, pp.digest, ctx.me))
                slot.own_prepare(ctx.me, pp.digest, vote.sig)
                sends.append(Broadcast(m.encode(vote)))
            records.append((slot_key(pp.seq), slot.record()))
        out.append(Persist(tuple(records)))
        if announce is not None:
            out.append(announce)
        out.extend(sends)
        log.restart_at(
            max(selection.max_seq, self._execution.committed_seq, checkpoints.stable_seq) + 1
        )
        reproposed = tuple(Reproposed(pp.seq, pp.digest, pp.payload) for pp in nv.pre_prepares)
        out.append(ViewChanged(view, ctx.primary(view), reproposed))
        for msg in self._future.drain():
            if msg.view >= view:
                self._dispatch(msg, out)
