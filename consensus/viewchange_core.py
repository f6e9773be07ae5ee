"""The replica's view-change transitions (Castro and Liskov, OSDI 1999, sections 4.4-4.5.2).

Kept apart from consensus/replica.py to keep each module small; these functions operate on the
replica's state and append to the step's action list exactly like its own methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from common import codec
from consensus import checkpoint, normal
from consensus import messages as m
from consensus.api import (
    NULL_DIGEST,
    Action,
    Broadcast,
    Persist,
    Reproposed,
    Send,
    Validate,
    ViewChanged,
)
from consensus.log import (
    KEY_NEW_VIEW,
    KEY_VIEW,
    retract_key,
    retract_record,
    slot_key,
    view_record,
)
from consensus.viewchange import Selection, view_change_problem

if TYPE_CHECKING:
    from consensus.replica import Replica

BACKOFF_EXPONENT_MAX = 4
RETRACT_TRIES_MAX = 3  # RETRACT sends, a view-change timeout apart, before we give up on it


def start_view_change(r: Replica, view: int, out: list[Action], resend: bool = False) -> None:
    """Move to ``view``: stop the normal case, broadcast VIEW-CHANGE, arm the back-off timer."""
    assert view > r._view or (resend and view == r._view), "views only grow"
    cfg = r._cfg
    r._view = view
    r._active = False
    r._inactive_since_ms = r._now_ms
    r._view_progress_ms = None
    r._retract = None
    r._retract_acks = set()
    r._retract_new_view = None
    r._behind_since_ms = None
    r._requested.clear()
    for slot in r._slots.values():
        slot.clear_votes()
    prepared = tuple(
        s.prepared
        for _, s in sorted(r._slots.items())
        if s.prepared is not None and r._in_window(s.seq)
    )
    vc = r._vote(
        m.ViewChange(
            view, r._stable_seq, r._stable_digest, r._stable_proof, prepared, r._me, epoch=r._epoch
        )
    )
    r._view_changes[r._me] = vc
    out.append(Persist(((KEY_VIEW, view_record(view, False, r._entered)),)))
    out.append(Broadcast(m.encode(vc)))
    own_cp = r._own_checkpoint
    if own_cp is not None and own_cp.seq > r._stable_seq:
        # Lost CHECKPOINTs would freeze the watermarks forever; resending them is cheap.
        out.append(Broadcast(m.encode(own_cp)))
    timeout_ms = cfg.view_change_timeout_ms * 2 ** min(r._backoff, BACKOFF_EXPONENT_MAX)
    r._view_change_timeout_ms = timeout_ms + r._rng.randrange(timeout_ms // 8 + 1)
    r._backoff += 1
    r._view_change_armed = False
    r._view_change_deadline_ms = r._now_ms + cfg.view_change_timeout_ms  # resend until armed
    r._request_deadline_ms = None
    arm_view_change_timer(r)
    try_new_view(r, out)


def arm_view_change_timer(r: Replica) -> None:
    """Section 4.5.2: the new-view timer runs only once 2f+1 replicas gave up on our view.

    Counting VIEW-CHANGEs for *higher* views too lets laggards catch up, while a replica that ran
    ahead waits for them instead of drifting further ahead in step with them.
    """
    if r._active or r._view_change_armed:
        return
    support = sum(1 for vc in r._view_changes.values() if vc.view >= r._view)
    if support >= r._quorum:
        r._view_change_armed = True
        r._view_change_deadline_ms = r._now_ms + r._view_change_timeout_ms


def on_view_change_timer(r: Replica, out: list[Action]) -> None:
    """The NEW-VIEW did not come: try the next view, or (not armed yet) resend VIEW-CHANGE."""
    if r._view_change_armed:
        return start_view_change(r, r._view + 1, out)
    if r._retract is not None:
        return retry_retract(r, out)
    own = r._view_changes.get(r._me)
    if own is not None and own.view == r._view:
        out.append(Broadcast(m.encode(own)))
    r._view_change_deadline_ms = r._now_ms + r._cfg.view_change_timeout_ms


def on_view_change(r: Replica, vc: m.ViewChange, out: list[Action]) -> None:
    cfg = r._cfg
    if vc.view < r._view or (vc.view == r._view and r._active):
        nv = r._new_view
        if r._active and nv is not None and nv.view == r._view and nv.sender == r._me:
            # The sender missed our NEW-VIEW; it is self-certifying, so hand it over.
            out.append(Send(vc.sender, m.encode(nv)))
        return r._drop(out, "old_view", vc.sender)
    if is_void(r, vc):
        return r._drop(out, "retracted_view_change", vc.sender)
    known = r._view_changes.get(vc.sender)
    if known is not None and (known.view, known.epoch) >= (vc.view, vc.epoch):
        return r._drop(out, "duplicate" if known == vc else "old_view", vc.sender)
    problem = view_change_problem(vc, cfg, r._quorum, r._verify)
    if problem is not None:
        return r._drop(out, problem, vc.sender)
    r._view_changes[vc.sender] = vc
    # Section 4.5.2: f+1 replicas asking for higher views cannot all be faulty, so join them.
    higher = sorted(
        (v.view for s, v in r._view_changes.items() if s != r._me and v.view > r._view),
        reverse=True,
    )
    if len(higher) > cfg.f:
        start_view_change(r, higher[cfg.f], out)
    else:
        if r._retract is not None and vc.view >= r._view:
            # Someone is coming to our view after all: count again, with a fresh VIEW-CHANGE
            # (our old one is void at whoever took our RETRACT).
            start_view_change(r, r._view, out, resend=True)
        arm_view_change_timer(r)
        try_new_view(r, out)


def try_new_view(r: Replica, out: list[Action]) -> None:
    """As the new primary with 2f+1 VIEW-CHANGEs for our view, send NEW-VIEW and enter it."""
    own = r._view_changes.get(r._me)
    if r._active or r._cfg.primary(r._view) != r._me or own is None or own.view != r._view:
        return
    others = [vc for s, vc in sorted(r._view_changes.items()) if vc.view == r._view and s != r._me]
    if len(others) + 1 < r._quorum:
        return
    chosen = sorted([own, *others[: r._quorum - 1]], key=lambda vc: vc.sender)
    selection = r._selection_for(chosen)
    pre_prepares = tuple(
        r._vote(m.PrePrepare(r._view, seq, digest, payload, r._me))
        for seq, digest, payload in selection.entries
    )
    nv = r._vote(m.NewView(r._view, tuple(chosen), pre_prepares, r._me))
    enter_view(r, nv, selection, out, Broadcast(m.encode(nv)))


def on_new_view(r: Replica, nv: m.NewView, out: list[Action]) -> None:
    """Check a NEW-VIEW the way section 4.4 asks: recompute its PRE-PREPAREs from its proof."""
    rt = r._retract
    if rt is not None and nv.view == rt.view and rt.view > r._entered:
        # The view our RETRACT returns to, which we never entered: keep it for the return.
        selection = check_new_view(r, nv, out)
        if selection is not None:
            r._retract_new_view = (nv, selection)
            maybe_return(r, out)
        return None
    if nv.view < r._view or (nv.view == r._view and r._active):
        return r._drop(out, "old_view", nv.sender)
    selection = check_new_view(r, nv, out)
    if selection is not None:
        r._view = nv.view
        enter_view(r, nv, selection, out, None)
    return None


def check_new_view(r: Replica, nv: m.NewView, out: list[Action]) -> Selection | None:
    """The NEW-VIEW's selection if it is valid (section 4.4), else None (and a Dropped)."""
    cfg = r._cfg
    if nv.sender != cfg.primary(nv.view):
        return _refuse(r, out, "not_primary", nv.sender)
    senders = [vc.sender for vc in nv.view_changes]
    if (
        len(set(senders)) != len(senders)
        or len(senders) < r._quorum
        or any(vc.view != nv.view or vc.sender >= cfg.n for vc in nv.view_changes)
    ):
        return _refuse(r, out, "bad_new_view", nv.sender)
    for vc in nv.view_changes:
        if is_void(r, vc):
            # Its sender took it back and returned to a lower view; we promised to refuse it.
            return _refuse(r, out, "retracted_view_change", nv.sender)
        if r._view_changes.get(vc.sender) == vc:
            continue  # already checked when it reached us directly
        content = m.signing_content(vc, cfg.chain_id)
        if not r._verify(cfg.validators[vc.sender], m.domain(vc.kind), content, vc.sig):
            return _refuse(r, out, "bad_new_view", nv.sender)
        if view_change_problem(vc, cfg, r._quorum, r._verify) is not None:
            return _refuse(r, out, "bad_new_view", nv.sender)
    selection = r._selection_for(list(nv.view_changes))
    if [(pp.seq, pp.digest, pp.payload) for pp in nv.pre_prepares] != list(selection.entries):
        return _refuse(r, out, "bad_new_view", nv.sender)
    for pp in nv.pre_prepares:
        if pp.view != nv.view or pp.sender != nv.sender:
            return _refuse(r, out, "bad_new_view", nv.sender)
        content = m.signing_content(pp, cfg.chain_id)
        if not r._verify(cfg.validators[pp.sender], m.domain(pp.kind), content, pp.sig):
            return _refuse(r, out, "bad_new_view", nv.sender)
    return selection


def _refuse(r: Replica, out: list[Action], reason: str, sender: int) -> Selection | None:
    r._drop(out, reason, sender)
    return None


def enter_view(
    r: Replica, nv: m.NewView, selection: Selection, out: list[Action], announce: Action | None
) -> None:
    """Start the normal case in ``nv.view`` with the NEW-VIEW's PRE-PREPAREs accepted."""
    view = nv.view
    r._active = True
    r._entered = max(r._entered, view)
    r._behind_since_ms = None
    r._new_view = nv
    r._view_change_deadline_ms = None
    r._request_deadline_ms = None
    r._requested.clear()
    if selection.stable_seq > r._stable_seq:
        checkpoint.adopt_stable(
            r, selection.stable_seq, selection.stable_digest, selection.stable_proof, out
        )
    for slot in r._slots.values():
        slot.clear_votes()
    records: list[tuple[bytes, bytes | None]] = [(KEY_VIEW, view_record(view, True, r._entered))]
    if nv.sender == r._me:
        # Only the primary answers a laggard's VIEW-CHANGE with its NEW-VIEW (on_view_change);
        # without this record a restart would leave it nothing to answer with.
        records.append((KEY_NEW_VIEW, m.encode(nv)))
    sends: list[Action] = []
    backup = r._cfg.primary(view) != r._me
    for pp in nv.pre_prepares:
        if pp.seq <= r._stable_seq:
            continue
        slot = r._slot(pp.seq)
        if slot.committed is not None and slot.committed.digest != pp.digest:
            r._drop(out, "new_view_conflicts_commit", nv.sender)
            continue
        normal.accept_pre_prepare(slot, pp, validated=True)
        if backup:
            vote = r._vote(m.Prepare(view, pp.seq, pp.digest, r._me))
            slot.prepare_sent = True
            slot.prepares[r._me] = (pp.digest, vote.sig)
            sends.append(Broadcast(m.encode(vote)))
        records.append((slot_key(pp.seq), slot.record()))
    out.append(Persist(tuple(records)))
    if announce is not None:
        out.append(announce)
    out.extend(sends)
    r._next_seq = max(selection.max_seq, r._last_committed, r._stable_seq) + 1
    reproposed = tuple(Reproposed(pp.seq, pp.digest, pp.payload) for pp in nv.pre_prepares)
    out.append(ViewChanged(view, r._cfg.primary(view), reproposed))
    future, r._future = r._future, {}
    for sender in sorted(future):
        for msg in future[sender]:
            if msg.view >= view:
                r._dispatch(msg, out)


def restore_new_view(r: Replica, data: bytes | None) -> m.NewView | None:
    """The persisted NEW-VIEW, if it is ours and for the view we restarted in (active)."""
    if data is None or not r._active:
        return None
    try:
        nv = m.decode(data, r._cfg.payload_bytes_max, max(len(data), r._cfg.message_bytes_max))
    except codec.CodecError:
        return None
    if not isinstance(nv, m.NewView) or nv.view != r._view or nv.sender != r._me:
        return None
    return nv


def on_buffered(r: Replica, out: list[Action]) -> None:
    """f+1 senders already voting in a later view: ask for that view's NEW-VIEW (section 4.5.2).

    An honest replica sends PRE-PREPARE/PREPARE/COMMIT of a view only after entering it, so f+1
    distinct (signature-checked) senders prove a NEW-VIEW exists for the (f+1)-th highest of
    their views. A replica that missed it (down during the view change, or its NEW-VIEW lost)
    would otherwise follow by catch-up without ever voting: under load every fetched commit
    resets its request timer, so it never times out, and the cluster stays one failure away
    from a stall. Its VIEW-CHANGE for that view is answered by the view's primary with the
    NEW-VIEW (on_view_change), or, if the others have moved on, their VIEW-CHANGEs pull it along.
    """
    views = sorted(
        (
            max(msg.view for msg in queue)
            for sender, queue in r._future.items()
            if queue and sender != r._me
        ),
        reverse=True,
    )
    f = r._cfg.f
    if len(views) > f and views[f] > r._view:
        start_view_change(r, views[f], out)


# --- following the others: a stale view, or a view change nobody joined --------------------


def follow_peers(r: Replica, out: list[Action]) -> None:
    """Act on what peers report (``PeerStatus``, signed messages of lower views); hints only.

    Behind: f+1 peers (so one honest) report a view above ours for half a view-change timeout:
    send VIEW-CHANGE for it; its primary answers with the NEW-VIEW (on_view_change), or the
    others' VIEW-CHANGEs pull us along. This closes the gap on an idle cluster, where no signed
    message of the later view reaches us (on_buffered covers the busy one).

    Alone: we have waited a view-change timeout in a view change that 2f+1 replicas did not
    join, while 2f peers still work in the view we left: take our VIEW-CHANGEs back (RETRACT)
    and return to that view once 2f+1 replicas acknowledged (on_retract_ack). Only to the view
    we left (``_entered``): its NEW-VIEW and our votes in it are still here; a later view we
    never entered is reached the usual way (its NEW-VIEW, or the others' VIEW-CHANGEs).
    """
    cfg = r._cfg
    now = r._now_ms
    since = now - cfg.view_change_timeout_ms
    target = r._peers.vouched_view(cfg.f, since)
    if target > r._view:
        if r._behind_since_ms is None:
            r._behind_since_ms = now
        elif now - r._behind_since_ms >= cfg.view_change_timeout_ms // 2:
            start_view_change(r, target, out)
            return
    else:
        r._behind_since_ms = None
    if r._active or r._view_change_armed or r._retract is not None:
        return
    if not r._retract_when_alone:
        return
    if now - r._inactive_since_ms < cfg.view_change_timeout_ms:
        return
    # Only reports made after we left count: they show peers that stayed behind.
    view = r._peers.common_view(r._view, r._quorum - 1, r._inactive_since_ms + 1)
    if view is not None and view >= r._entered:
        send_retract(r, view, out)


def is_void(r: Replica, vc: m.ViewChange) -> bool:
    """A VIEW-CHANGE its sender retracted (RETRACT persisted here): it may not count anywhere."""
    known = r._retracted.get(vc.sender)
    if known is None or not r._refuse_retracted:
        return False
    return vc.view > known[0] and vc.epoch <= known[1]


def store_retraction(r: Replica, sender: int, view: int, epoch: int) -> list[Action]:
    """Remember ``sender``'s RETRACT; the Persist to emit before anything that relies on it.

    Several RETRACTs of one sender merge into (lowest view, highest epoch): that voids at least
    what each voids, and an honest sender's later VIEW-CHANGEs carry a higher epoch than any of
    its RETRACTs, so the merge never voids one it still relies on.
    """
    old = r._retracted.get(sender)
    new = (view, epoch) if old is None else (min(old[0], view), max(old[1], epoch))
    if new == old:
        return []
    r._retracted[sender] = new
    vc = r._view_changes.get(sender)
    if vc is not None and is_void(r, vc):
        del r._view_changes[sender]
        support = sum(1 for v in r._view_changes.values() if v.view >= r._view)
        if not r._active and r._view_change_armed and support < r._quorum:
            r._view_change_armed = False
            r._view_change_deadline_ms = r._now_ms + r._cfg.view_change_timeout_ms
    return [Persist(((retract_key(sender), retract_record(*new)),))]


def send_retract(r: Replica, view: int, out: list[Action]) -> None:
    """Void our VIEW-CHANGEs above ``view`` (epoch and below) and ask 2f replicas to confirm."""
    assert not r._active
    assert r._entered <= view < r._view, "a RETRACT never returns below a view we entered"
    epoch = r._epoch
    rt = r._vote(m.Retract(view, epoch, r._me))
    out.extend(store_retraction(r, r._me, view, epoch))
    r._epoch = epoch + 1  # our VIEW-CHANGEs from now on are not void
    r._retract = rt
    r._retract_acks = {r._me}
    r._retract_new_view = None
    r._retract_tries = 1
    r._view_change_armed = False
    r._view_change_deadline_ms = r._now_ms + r._cfg.view_change_timeout_ms
    out.append(Broadcast(m.encode(rt)))
    if r._retract_quorum() <= 1:
        maybe_return(r, out)


def retry_retract(r: Replica, out: list[Action]) -> None:
    """No 2f+1 acknowledgments yet: resend a few times, then give up with a fresh VIEW-CHANGE
    (our old ones are void where the RETRACT was acknowledged) and wait a timeout again."""
    rt = r._retract
    assert rt is not None
    since = r._now_ms - r._cfg.view_change_timeout_ms
    view = r._peers.common_view(r._view, r._quorum - 1, max(since, r._inactive_since_ms + 1))
    if view == rt.view and r._retract_tries < RETRACT_TRIES_MAX:
        r._retract_tries += 1
        out.append(Broadcast(m.encode(rt)))
        r._view_change_deadline_ms = r._now_ms + r._cfg.view_change_timeout_ms
    else:
        start_view_change(r, r._view, out, resend=True)


def on_retract(r: Replica, rt: m.Retract, out: list[Action]) -> None:
    """Persist a peer's RETRACT; acknowledge it if we are active in the view it returns to.

    Only a replica active in that view acknowledges: it was never active above it (a replica's
    active views never decrease), so it never entered a view whose NEW-VIEW used the retracted
    VIEW-CHANGEs, and from now on it refuses every such NEW-VIEW (on_new_view).
    """
    if not (r._active and rt.view == r._view):
        # Not stored either: voiding its VIEW-CHANGEs here would only slow a view change.
        return r._drop(out, "retract_not_in_view", rt.sender)
    out.extend(store_retraction(r, rt.sender, rt.view, rt.epoch))
    ack = r._vote(m.RetractAck(rt.view, rt.epoch, rt.sender, r._me))
    out.append(Send(rt.sender, m.encode(ack)))
    nv = r._new_view
    if nv is not None and nv.view == r._view and nv.sender == r._me:
        # It may never have entered this view: it returns through our NEW-VIEW.
        out.append(Send(rt.sender, m.encode(nv)))


def on_retract_ack(r: Replica, ack: m.RetractAck, out: list[Action]) -> None:
    rt = r._retract
    if rt is None or ack.target != r._me or (ack.view, ack.epoch) != (rt.view, rt.epoch):
        return r._drop(out, "stale_retract_ack", ack.sender)
    if ack.sender in r._retract_acks:
        return r._drop(out, "duplicate", ack.sender)
    r._retract_acks.add(ack.sender)
    maybe_return(r, out)


def maybe_return(r: Replica, out: list[Action]) -> None:
    """With 2f+1 acknowledgments: back to the view we left, or into the later view the others
    work in through its NEW-VIEW (checked like any other, section 4.4)."""
    rt = r._retract
    if rt is None or len(r._retract_acks) < r._retract_quorum():
        return
    if rt.view == r._entered:
        return return_to_view(r, out)
    pending = r._retract_new_view
    if pending is None:
        return  # its primary sends it with its acknowledgment; or we give up on a timeout
    nv, selection = pending
    r._view = nv.view
    r._retract = None
    r._retract_acks = set()
    r._retract_new_view = None
    r._view_change_armed = False
    enter_view(r, nv, selection, out, None)


def return_to_view(r: Replica, out: list[Action]) -> None:
    """2f+1 replicas (us included) hold our RETRACT: resume the normal case in its view.

    Our own votes of that view are re-sent (same bytes), a verdict that came while we were away
    is asked for again; what we missed meanwhile comes by fetching.
    """
    rt = r._retract
    assert rt is not None
    assert not r._active
    view = rt.view
    assert r._entered == view < r._view, "without a NEW-VIEW we return only to the view we left"
    r._view = view
    r._active = True
    r._entered = view
    r._retract = None
    r._retract_acks = set()
    r._view_change_armed = False
    r._view_change_deadline_ms = None
    r._request_deadline_ms = None
    r._behind_since_ms = None
    r._requested.clear()
    sends: list[Action] = []
    for slot in sorted(r._slots.values(), key=lambda s: s.seq):
        pp = slot.pre_prepare
        if pp is None or pp.view != view:
            continue
        slot.clear_votes()
        if pp.sender == r._me:
            r._next_seq = max(r._next_seq, slot.seq + 1)
        if slot.prepare_sent:
            vote = r._vote(m.Prepare(view, slot.seq, pp.digest, r._me))
            slot.prepares[r._me] = (pp.digest, vote.sig)
            sends.append(Broadcast(m.encode(vote)))
        elif not (slot.validated or slot.rejected or pp.digest == NULL_DIGEST) and (
            slot.seq > r._last_committed
        ):
            sends.append(Validate(pp.view, pp.seq, pp.digest, pp.payload))
        if slot.commit_sent:
            commit = r._vote(m.CommitVote(view, slot.seq, pp.digest, r._me))
            slot.commits[r._me] = (pp.digest, commit.sig)
            sends.append(Broadcast(m.encode(commit)))
    out.append(Persist(((KEY_VIEW, view_record(view, True, r._entered)),)))
    out.extend(sends)
    out.append(ViewChanged(view, r._cfg.primary(view)))
