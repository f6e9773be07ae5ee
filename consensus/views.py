"""Where this replica stands among views: its view, whether it works in it, and the messages of
later views it holds until it gets there (Castro and Liskov, OSDI 1999, section 4.4).

Owners with pure methods; the transitions that move between views live in
consensus/viewchange_core.py and consensus/retract.py and call these.
"""

from __future__ import annotations

from consensus import messages as m


class ViewState:
    """Our view, whether we are active in it, and ``entered``: the highest view we were ever
    active in. A RETRACT never returns below ``entered`` (consensus/viewchange_core.py)."""

    def __init__(self) -> None:
        self._view = 0
        self._active = True  # False while changing to ``view``
        self._entered = 0

    @property
    def view(self) -> int:
        return self._view

    @property
    def active(self) -> bool:
        return self._active

    @property
    def entered(self) -> int:
        return self._entered

    def restore(self, view: int, active: bool, entered: int) -> None:
        """The persisted view record; an active view counts as entered."""
        self._view, self._active = view, active
        self._entered = max(entered, view) if active else entered

    def begin_change(self, view: int, resend: bool) -> None:
        """Leave the normal case for ``view`` (or restart the change to our view: ``resend``)."""
        assert view > self._view or (resend and view == self._view), "views only grow"
        self._view = view
        self._active = False

    def enter(self, view: int) -> None:
        """Active in ``view`` (its NEW-VIEW sent or accepted)."""
        self._view = view
        self._active = True
        self._entered = max(self._entered, view)

    def return_to(self, view: int) -> None:
        """Back to the view we left, after our RETRACT was acknowledged (no NEW-VIEW needed)."""
        assert not self._active
        assert self._entered == view < self._view, "without a NEW-VIEW we return only to it"
        self._view = view
        self._active = True


class FutureBuffer:
    """PRE-PREPARE/PREPARE/COMMITs of views we have not entered yet, a bounded queue per sender."""

    def __init__(self, per_sender_max: int) -> None:
        self._per_sender_max = per_sender_max
        self._queues: dict[int, list[m.SlotMessage]] = {}

    def add(self, msg: m.SlotMessage) -> bool:
        """Keep ``msg``; False (and not kept) when its sender's queue is full. A message held
        already is not kept twice (resent ones would crowd out the new)."""
        queue = self._queues.setdefault(msg.sender, [])
        if msg in queue:
            return True
        if len(queue) >= self._per_sender_max:
            return False
        queue.append(msg)
        return True

    def vouched_view(self, f: int, me: int) -> int:
        """The highest view at least f+1 other senders already vote in (else -1)."""
        views = sorted(
            (
                max(msg.view for msg in queue)
                for sender, queue in self._queues.items()
                if queue and sender != me
            ),
            reverse=True,
        )
        return views[f] if len(views) > f else -1

    def drain(self) -> list[m.SlotMessage]:
        """Everything held, by sender then arrival; the buffer starts empty again."""
        queues, self._queues = self._queues, {}
        return [msg for sender in sorted(queues) for msg in queues[sender]]
