"""The replica's view-change transitions (Castro and Liskov, OSDI 1999, sections 4.4-4.5.2).

Kept apart from consensus/replica.py to keep each module small; these functions operate on the
replica's state and append to the step's action list exactly like its own methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from common import codec
from consensus import checkpoint, normal
from consensus import messages as m
from consensus.api import Action, Broadcast, Persist, Reproposed, Send, ViewChanged
from consensus.log import KEY_NEW_VIEW, KEY_VIEW, slot_key, view_record
from consensus.viewchange import Selection, view_change_problem

if TYPE_CHECKING:
    from consensus.replica import Replica

BACKOFF_EXPONENT_MAX = 4


def start_view_change(r: Replica, view: int, out: list[Action], resend: bool = False) -> None:
    """Move to ``view``: stop the normal case, broadcast VIEW-CHANGE, arm the back-off timer."""
    assert view > r._view or (resend and view == r._view), "views only grow"
    cfg = r._cfg
    r._view = view
    r._active = False
    r._requested.clear()
    for slot in r._slots.values():
        slot.clear_votes()
    prepared = tuple(
        s.prepared
        for _, s in sorted(r._slots.items())
        if s.prepared is not None and r._in_window(s.seq)
    )
    vc = r._vote(
        m.ViewChange(view, r._stable_seq, r._stable_digest, r._stable_proof, prepared, r._me)
    )
    r._view_changes[r._me] = vc
    out.append(Persist(((KEY_VIEW, view_record(view, False)),)))
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
    known = r._view_changes.get(vc.sender)
    if known is not None and known.view >= vc.view:
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
        arm_view_change_timer(r)
        try_new_view(r, out)


def try_new_view(r: Replica, out: list[Action]) -> None:
    """As the new primary with 2f+1 VIEW-CHANGEs for our view, send NEW-VIEW and enter it."""
    if r._active or r._cfg.primary(r._view) != r._me:
        return
    others = [vc for s, vc in sorted(r._view_changes.items()) if vc.view == r._view and s != r._me]
    if len(others) + 1 < r._quorum:
        return
    chosen = sorted([r._view_changes[r._me], *others[: r._quorum - 1]], key=lambda vc: vc.sender)
    selection = r._selection_for(chosen)
    pre_prepares = tuple(
        r._vote(m.PrePrepare(r._view, seq, digest, payload, r._me))
        for seq, digest, payload in selection.entries
    )
    nv = r._vote(m.NewView(r._view, tuple(chosen), pre_prepares, r._me))
    enter_view(r, nv, selection, out, Broadcast(m.encode(nv)))


def on_new_view(r: Replica, nv: m.NewView, out: list[Action]) -> None:
    """Check a NEW-VIEW the way section 4.4 asks: recompute its PRE-PREPAREs from its proof."""
    cfg = r._cfg
    if nv.view < r._view or (nv.view == r._view and r._active):
        return r._drop(out, "old_view", nv.sender)
    if nv.sender != cfg.primary(nv.view):
        return r._drop(out, "not_primary", nv.sender)
    senders = [vc.sender for vc in nv.view_changes]
    if (
        len(set(senders)) != len(senders)
        or len(senders) < r._quorum
        or any(vc.view != nv.view or vc.sender >= cfg.n for vc in nv.view_changes)
    ):
        return r._drop(out, "bad_new_view", nv.sender)
    for vc in nv.view_changes:
        if r._view_changes.get(vc.sender) == vc:
            continue  # already checked when it reached us directly
        content = m.signing_content(vc, cfg.chain_id)
        if not r._verify(cfg.validators[vc.sender], m.domain(vc.kind), content, vc.sig):
            return r._drop(out, "bad_new_view", nv.sender)
        if view_change_problem(vc, cfg, r._quorum, r._verify) is not None:
            return r._drop(out, "bad_new_view", nv.sender)
    selection = r._selection_for(list(nv.view_changes))
    if [(pp.seq, pp.digest, pp.payload) for pp in nv.pre_prepares] != list(selection.entries):
        return r._drop(out, "bad_new_view", nv.sender)
    for pp in nv.pre_prepares:
        if pp.view != nv.view or pp.sender != nv.sender:
            return r._drop(out, "bad_new_view", nv.sender)
        content = m.signing_content(pp, cfg.chain_id)
        if not r._verify(cfg.validators[pp.sender], m.domain(pp.kind), content, pp.sig):
            return r._drop(out, "bad_new_view", nv.sender)
    r._view = nv.view
    enter_view(r, nv, selection, out, None)


def enter_view(
    r: Replica, nv: m.NewView, selection: Selection, out: list[Action], announce: Action | None
) -> None:
    """Start the normal case in ``nv.view`` with the NEW-VIEW's PRE-PREPAREs accepted."""
    view = nv.view
    r._active = True
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
    records: list[tuple[bytes, bytes | None]] = [(KEY_VIEW, view_record(view, True))]
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
