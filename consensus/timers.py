"""The replica's timers (Castro and Liskov, OSDI 1999, sections 4.4 and 4.5.2): the request timer
of the normal case, the resend timer of a stalled slot, the new-view timer with its exponential
back-off, and when the host must tick us next. Deadlines are absolute simulated or host
milliseconds; nothing here reads a clock."""

from __future__ import annotations

import random

BACKOFF_EXPONENT_MAX = 4
RESENDS_PER_REQUEST_TIMEOUT = 4  # resend timer = request timeout / this


class ViewTimers:
    """Deadlines and the back-off; the transitions decide, these only remember and compute."""

    def __init__(self, request_timeout_ms: int, view_change_timeout_ms: int, now_ms: int) -> None:
        assert request_timeout_ms > 0
        assert view_change_timeout_ms > 0
        self._request_timeout_ms = request_timeout_ms
        self._base_ms = view_change_timeout_ms  # the configured view-change timeout
        self._request_deadline_ms: int | None = None
        # A quarter of the request timeout: a stalled slot's messages go three times more before
        # the request timer gives up on the view (a PREPARE and then a COMMIT may both be lost).
        self._resend_ms = max(1, request_timeout_ms // RESENDS_PER_REQUEST_TIMEOUT)
        self._resend_deadline_ms: int | None = None
        self._view_change_deadline_ms: int | None = None
        self._view_change_timeout_ms = view_change_timeout_ms  # the current, backed-off one
        self._armed = False  # the new-view timer runs (2f+1 replicas left our view)
        self._backoff = 0
        self._timer_ms: int | None = None  # the last SetTimer we asked for
        self._view_progress_ms: int | None = None  # last commit certificate formed in our view
        self._inactive_since_ms = now_ms  # when we last left the normal case
        self._behind_since_ms: int | None = None  # f+1 peers report a view above ours since

    @property
    def armed(self) -> bool:
        return self._armed

    @property
    def inactive_since_ms(self) -> int:
        return self._inactive_since_ms

    # --- the request timer (normal case) ------------------------------------------------------

    def keep_request(self, now_ms: int, running: bool) -> None:
        """Run the request timer while there is work in an active view; otherwise stop it."""
        if not running:
            self._request_deadline_ms = None
        elif self._request_deadline_ms is None:
            self._request_deadline_ms = now_ms + self._request_timeout_ms

    def request_timed_out(self, now_ms: int) -> bool:
        """The request timer expired with no commit certificate formed in our view lately.

        While certificates keep forming (2f+1 replicas, so f+1 honest ones, vote in the view),
        what we miss is fetched; leaving alone would only strand us in a view nobody joins.
        """
        deadline = self._request_deadline_ms
        if deadline is None or now_ms < deadline:
            return False
        progress = self._view_progress_ms
        if progress is not None and now_ms < progress + self._request_timeout_ms:
            self._request_deadline_ms = progress + self._request_timeout_ms
            return False
        return True

    def certificate_formed(self, now_ms: int) -> None:
        self._view_progress_ms = now_ms

    def executed(self) -> None:
        """Progress: the request and resend timers restart and the back-off resets."""
        self._request_deadline_ms = None
        self._resend_deadline_ms = None
        self._backoff = 0

    def applied(self) -> None:
        """The host made another committed block durable: the request timer restarts.

        Under overload the host applies blocks seconds after the core committed them, and a
        primary's pipeline waits for those applications before it proposes more. Time spent on
        our own backlog of committed blocks says nothing against the primary: the timer judges
        it only from the moment the backlog is drained. Only blocks that already have commit
        certificates are applied, so a faulty primary cannot use this to stay in office.
        The resend timer restarts too: a host still working through its backlog is no sign
        of lost messages, and resending would only add to the load.
        """
        self._request_deadline_ms = None
        self._resend_deadline_ms = None

    # --- the resend timer (normal case) -------------------------------------------------------

    @property
    def resend_armed(self) -> bool:
        return self._resend_deadline_ms is not None

    def arm_resend(self, now_ms: int) -> None:
        """A slot of our view is open: its messages go again if nothing executes meanwhile."""
        if self._resend_deadline_ms is None:
            self._resend_deadline_ms = now_ms + self._resend_ms

    def stop_resend(self) -> None:
        self._resend_deadline_ms = None

    def resend_due(self, now_ms: int) -> bool:
        """The resend timer ran out (and restarts: the next resend is one interval later)."""
        deadline = self._resend_deadline_ms
        if deadline is None or now_ms < deadline:
            return False
        self._resend_deadline_ms = now_ms + self._resend_ms
        return True

    # --- view changes ---------------------------------------------------------------------------

    def left_view(self, now_ms: int, rng: random.Random) -> None:
        """A view change starts: back off (with jitter from ``rng``) and resend until armed."""
        self._inactive_since_ms = now_ms
        self._view_progress_ms = None
        self._behind_since_ms = None
        timeout_ms = self._base_ms * 2 ** min(self._backoff, BACKOFF_EXPONENT_MAX)
        self._view_change_timeout_ms = timeout_ms + rng.randrange(timeout_ms // 8 + 1)
        self._backoff += 1
        self._armed = False
        self._view_change_deadline_ms = now_ms + self._base_ms
        self._request_deadline_ms = None
        self._resend_deadline_ms = None

    def arm(self, now_ms: int) -> None:
        """2f+1 replicas gave up on our view: the backed-off new-view timer starts."""
        assert not self._armed
        self._armed = True
        self._view_change_deadline_ms = now_ms + self._view_change_timeout_ms

    def disarm(self, now_ms: int) -> None:
        """Support fell below 2f+1, or we take our VIEW-CHANGE back: resend instead."""
        self._armed = False
        self.wait(now_ms)

    def wait(self, now_ms: int) -> None:
        """Come back after one (un-backed-off) view-change timeout."""
        self._view_change_deadline_ms = now_ms + self._base_ms

    def view_change_timed_out(self, now_ms: int) -> bool:
        deadline = self._view_change_deadline_ms
        return deadline is not None and now_ms >= deadline

    def entered_view(self) -> None:
        """Active again: no view-change or request deadline is pending."""
        self._armed = False
        self._view_change_deadline_ms = None
        self._request_deadline_ms = None
        self._resend_deadline_ms = None
        self._behind_since_ms = None

    def behind_long_enough(self, now_ms: int, behind: bool) -> bool:
        """True once peers have reported a higher view for half a view-change timeout."""
        if not behind:
            self._behind_since_ms = None
            return False
        if self._behind_since_ms is None:
            self._behind_since_ms = now_ms
            return False
        return now_ms - self._behind_since_ms >= self._base_ms // 2

    # --- the host's timer -----------------------------------------------------------------------

    def next_timer(
        self, active: bool, fetch_deadline_ms: int | None, heartbeat_ms: int | None = None
    ) -> int | None:
        """The earliest deadline, if it is not the one the host already has (else None)."""
        deadlines = [
            d
            for d in (
                self._request_deadline_ms,
                self._resend_deadline_ms if active else None,
                self._view_change_deadline_ms if not active else None,
                fetch_deadline_ms,
                heartbeat_ms,
            )
            if d is not None
        ]
        at = min(deadlines, default=None)
        if at is None or at == self._timer_ms:
            return None
        self._timer_ms = at
        return at
