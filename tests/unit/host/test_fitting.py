"""The fitting process's pacing: a fit sleeps between its steps in proportion to its CPU."""

from __future__ import annotations

import pickle
import threading
import time

import pytest

from node.host.fitting import PACE_SLEEP_MAX_S, FitStopped, Pacer


class FakeTime:
    def __init__(self) -> None:
        self.cpu = 0.0
        self.slept: list[float] = []

    def thread_time(self) -> float:
        return self.cpu

    def sleep(self, s: float) -> None:
        self.slept.append(s)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    clock = FakeTime()
    monkeypatch.setattr(time, "thread_time", clock.thread_time)
    monkeypatch.setattr(time, "sleep", clock.sleep)
    return clock


def test_each_step_is_followed_by_a_sleep_that_keeps_the_share(fake: FakeTime) -> None:
    pace = Pacer(0.1)
    pace()  # the start: nothing to pay for yet
    assert fake.slept == []
    fake.cpu += 0.004
    pace()
    fake.cpu += 0.010
    pace()
    assert fake.slept == pytest.approx([0.036, 0.090])  # 9 parts asleep per part run
    fake.cpu += 5.0  # one huge step still pauses a bounded time
    pace()
    assert fake.slept[-1] == PACE_SLEEP_MAX_S


def test_a_whole_core_never_sleeps_and_a_bad_share_is_refused(fake: FakeTime) -> None:
    pace = Pacer(1.0)
    for _ in range(3):
        fake.cpu += 0.01
        pace()
    assert fake.slept == []
    for share in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError):
            Pacer(share)


def test_the_pacer_travels_to_the_fitting_process_without_the_nodes_event() -> None:
    pace = pickle.loads(pickle.dumps(Pacer(0.25, stopping=threading.Event())))
    assert pace.share == 0.25
    pace()  # no event in this process: it paces and never stops


def test_a_fit_in_a_thread_of_the_node_gives_up_when_the_node_stops() -> None:
    """The fallback when the fitting process died: the node's own event stops the fit, even
    in the middle of a pause."""
    stopping = threading.Event()
    pace = Pacer(0.001, stopping=stopping)  # a pause ~1,000 times the step: up to 1 s
    outcome: list[BaseException] = []

    def fit() -> None:
        try:
            for _ in range(100):  # ~100 s if nothing stops it
                pace()
                end = time.thread_time() + 0.002
                while time.thread_time() < end:
                    pass
        except FitStopped as exc:
            outcome.append(exc)

    worker = threading.Thread(target=fit)
    worker.start()
    time.sleep(0.3)
    started = time.monotonic()
    stopping.set()
    worker.join(timeout=5.0)
    assert not worker.is_alive()
    assert time.monotonic() - started < 0.5  # not the rest of a pause
    assert len(outcome) == 1


def test_a_stopping_node_does_not_wait_for_the_fit_in_progress() -> None:
    """The real fitting process: a fit paced to last ~30 s gives up once the pool shuts down,
    so the node's stop (and its exit, which joins the pool) is not held for it."""
    import functools
    import time as clock

    import numpy as np

    from ml.features import N_FEATURES
    from node.detect.model import train_model
    from node.host.screening import training_pool

    X = np.random.default_rng(5).random((5000, N_FEATURES))
    fit = functools.partial(
        train_model,
        n_trees=100,
        sample_size=256,
        contamination=0.01,
        score_floor=0.6,
        pause=Pacer(0.01),  # ~0.3 s of CPU at a hundredth of a core
    )
    pool = training_pool()
    future = pool.submit(fit, X, 7)
    handed = clock.monotonic() + 5.0
    while not future.running() and clock.monotonic() < handed:
        clock.sleep(0.01)
    assert future.running()  # handed to the process: a shutdown cannot cancel it
    started = clock.monotonic()
    pool.shutdown(wait=True, cancel_futures=True)
    assert clock.monotonic() - started < 10.0
    with pytest.raises(FitStopped):
        future.result(timeout=0)
