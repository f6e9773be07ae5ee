"""Traffic scenarios for the detector: benign shifts of load and habit, with known anomalies.

Pure and deterministic (one ``random.Random(seed)``): a scenario is a list of ``Step``s, one per
block interval, each with the ordinary txs and the abnormal cases submitted during it. The
replay (node/tools/drill.py) feeds them through the real screening path; tests and
``scripts/detector_drill`` use it, and ``scripts/bench`` takes its transfer plan from
``bench_plan``.

Scenarios (a history phase the model is trained on, then a scored phase):

- ``steady``: a population paying regular counterparties at its own pace;
- ``ramp``: every sender x10 within a minute, a few minutes there, and back;
- ``onboarding``: thousands of new senders paying never-seen addresses;
- ``inflation``: all amounts x3 over the scored phase;
- ``daynight``: the rate swings between 0.2x and 1.8x;
- ``bench_idle``: bench-like load (everyone pays the next account 1 unit, fast) after two idle
hours;
- ``bench_steady``: bench-like load at max rate after the window learned it at a steady rate.

Injected anomalies (every ``CASE_EVERY`` steps of the scored phase, kinds in turn): ``huge`` (500 to
5000x the sender's typical amount, to a regular payee), ``drain`` (50 to 300x, to a fresh
address), ``burst`` (12 to 20 transfers in about 3 s to fresh addresses) and ``fanout`` (an account
quiet until then pays 12 to 20 distinct known addresses within about 20 s).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

SCENARIOS = (
    "steady",
    "ramp",
    "onboarding",
    "inflation",
    "daynight",
    "bench_idle",
    "bench_steady",
)
KINDS = ("huge", "drain", "burst", "fanout")
CASE_EVERY = 10  # steps between abnormal cases
STEP_MS = 1000
HISTORY_STEPS = 400
SCORED_STEPS = 320
START_MS = 1_700_000_000_000


class ScenarioError(ValueError):
    """A bad scenario name or parameter (one line, for the drill's command line)."""


@dataclass(frozen=True, slots=True)
class SimTx:
    """What the detector reads of a transaction (node.detect.history.TxLike)."""

    kind: str
    sender_address: bytes
    to: bytes
    amount: int
    fee: int
    nonce: int
    hash: bytes

    @property
    def size_bytes(self) -> int:
        return 160  # about a signed transfer's encoding


@dataclass(frozen=True, slots=True)
class Case:
    """One abnormal case: its txs arrive spread over ``spread_ms`` from the step's start."""

    kind: str
    txs: tuple[SimTx, ...]
    spread_ms: int


@dataclass(frozen=True, slots=True)
class Step:
    """One block interval: ``scored`` is False in the history phase (committed, not scored)."""

    now_ms: int
    ordinary: tuple[SimTx, ...]
    cases: tuple[Case, ...] = ()
    scored: bool = True


def address(tag: str) -> bytes:
    return hashlib.sha256(tag.encode()).digest()[:20]


@dataclass(slots=True)
class _Account:
    addr: bytes
    typical: float
    favorites: list[bytes] = field(default_factory=list)
    nonce: int = 0


class _Population:
    def __init__(self, rng: random.Random, tag: str, n: int) -> None:
        self.rng = rng
        self.tag = tag
        self.accounts = [
            _Account(address(f"{tag}-acct-{i}"), 10 ** rng.uniform(1.5, 4.5)) for i in range(n)
        ]
        addrs = [a.addr for a in self.accounts]
        for a in self.accounts:
            a.favorites = rng.sample(addrs, 4)
        self.count = 0
        self.fresh = 0

    def tx(
        self, acct: _Account, to: bytes, amount: int, kind: str = "transfer", fee: int = 0
    ) -> SimTx:
        if fee == 0:
            fee = 10 if self.rng.random() < 0.8 else self.rng.choice((5, 12, 20))
        self.count += 1
        tx = SimTx(
            kind,
            acct.addr,
            to,
            0 if kind != "transfer" else max(1, amount),
            fee,
            acct.nonce,
            address(f"{self.tag}-tx-{self.count}"),
        )
        acct.nonce += 1
        return tx

    def fresh_address(self) -> bytes:
        self.fresh += 1
        return address(f"{self.tag}-fresh-{self.fresh}")

    def ordinary(self, acct: _Account | None = None, inflation: float = 1.0) -> SimTx:
        rng = self.rng
        acct = acct or rng.choice(self.accounts)
        if rng.random() < 0.03:
            return self.tx(acct, b"", 0, "anchor", fee=10)
        r = rng.random()
        if r < 0.85:
            to = rng.choice(acct.favorites)
        elif r < 0.97:
            to = rng.choice(self.accounts).addr
        else:
            to = self.fresh_address()
        return self.tx(acct, to, round(acct.typical * inflation * rng.lognormvariate(0.0, 0.6)))


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth for small means, normal approximation for large ones: cheap and deterministic.
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


class Scenario:
    """A named scenario for one seed; iterate it for its steps."""

    def __init__(
        self,
        name: str,
        seed: int,
        *,
        accounts: int = 200,
        per_step: float = 6.0,
        history_steps: int = HISTORY_STEPS,
        scored_steps: int = SCORED_STEPS,
        inject: bool = True,
    ) -> None:
        if name not in SCENARIOS:
            raise ScenarioError(f"unknown scenario {name!r} (one of {', '.join(SCENARIOS)})")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ScenarioError(f"seed must be a non-negative integer, got {seed!r}")
        for label, value in (
            ("accounts", accounts),
            ("history_steps", history_steps),
            ("scored_steps", scored_steps),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ScenarioError(f"{label} must be a positive integer, got {value!r}")
        if not per_step > 0:
            raise ScenarioError(f"per_step must be positive, got {per_step!r}")
        self.name = name
        self.seed = seed
        self.rng = random.Random(f"{name}/{seed}")
        self.pop = _Population(self.rng, f"{name}-{seed}", accounts)
        self.bench = _Population(self.rng, f"{name}-{seed}-bench", 100)
        self.per_step = per_step
        self.history_steps = history_steps
        # Bench load is heavy (500 txs a step): two minutes of it say what ten would.
        self.scored_steps = min(scored_steps, 120) if name.startswith("bench") else scored_steps
        self.inject = inject
        self.now_ms = START_MS
        self.onboarded = 0
        self._kind = 0

    @property
    def addresses(self) -> list[bytes]:
        """Accounts known before the first block (genesis)."""
        return [a.addr for a in self.pop.accounts + self.bench.accounts]

    # --- ordinary traffic by scenario -----------------------------------------------------------

    def _rate(self, t: int) -> float:
        """Multiplier of the population's rate at scored step ``t``."""
        if self.name == "ramp":
            up, top = 60, 180
            if t < up:
                return 1 + 9 * t / up
            if t < top:
                return 10.0
            if t < top + up:
                return 10 - 9 * (t - top) / up
            return 1.0
        if self.name == "daynight":
            return 1.0 + 0.8 * math.sin(2 * math.pi * t / 240)
        return 1.0

    def _ordinary(self, t: int | None) -> list[SimTx]:
        rng = self.rng
        name = self.name
        if t is None:  # history
            if name == "bench_steady":
                return self._bench_txs(1.5)
            if name == "daynight":
                return [
                    self.pop.ordinary()
                    for _ in range(_poisson(rng, self.per_step * self._rate(-1)))
                ]
            return [self.pop.ordinary() for _ in range(_poisson(rng, self.per_step))]
        if name in ("bench_idle", "bench_steady"):
            return self._bench_txs(5.0)
        inflation = 3.0 ** (t / self.scored_steps) if name == "inflation" else 1.0
        n = _poisson(rng, self.per_step * self._rate(t))
        txs = [self.pop.ordinary(inflation=inflation) for _ in range(n)]
        if name == "onboarding":
            # ~2000 newcomers over the phase, each paying a never-seen address once or twice.
            for _ in range(_poisson(rng, 2000 / self.scored_steps)):
                self.onboarded += 1
                acct = _Account(
                    address(f"{name}-{self.seed}-new-{self.onboarded}"), 10 ** rng.uniform(1.5, 4.5)
                )
                for _ in range(rng.choice((1, 1, 2))):
                    txs.append(self.pop.tx(acct, self.pop.fresh_address(), round(acct.typical)))
        rng.shuffle(txs)
        return txs

    def _bench_txs(self, per_account_s: float) -> list[SimTx]:
        """Bench-like: each account pays the next one 1 unit with fee 1,
        ``per_account_s`` a second.
        """
        accts = self.bench.accounts
        plan = bench_plan(len(accts), round(per_account_s * len(accts) * STEP_MS / 1000))
        return [self.bench.tx(accts[k], accts[to].addr, amount, fee=1) for k, to, amount in plan]

    # --- anomalies ------------------------------------------------------------------------------

    def _case(self) -> Case:
        kind = KINDS[self._kind % len(KINDS)]
        self._kind += 1
        rng, pop = self.rng, self.pop
        acct = rng.choice(pop.accounts)
        if kind == "huge":
            amount = round(acct.typical * 10 ** rng.uniform(2.7, 3.7))
            return Case(kind, (pop.tx(acct, rng.choice(acct.favorites), amount),), 0)
        if kind == "drain":
            amount = round(acct.typical * rng.uniform(50, 300))
            return Case(kind, (pop.tx(acct, pop.fresh_address(), amount),), 0)
        n = rng.randint(12, 20)
        if kind == "burst":
            txs = tuple(
                pop.tx(acct, pop.fresh_address(), round(acct.typical * rng.lognormvariate(0, 0.6)))
                for _ in range(n)
            )
            return Case(kind, txs, 3000)
        # fanout: a quiet account (a fresh one, so it truly had no pace) pays known addresses.
        quiet = _Account(address(f"{self.name}-{self.seed}-quiet-{self._kind}"), acct.typical)
        quiet.favorites = [rng.choice(pop.accounts).addr]
        targets = rng.sample([a.addr for a in pop.accounts], n)
        txs = tuple(
            pop.tx(quiet, to, round(quiet.typical * rng.lognormvariate(0, 0.6))) for to in targets
        )
        return Case(kind, txs, 20_000)

    # --- steps ----------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Step]:
        for _ in range(self.history_steps):
            self.now_ms += STEP_MS
            yield Step(self.now_ms, tuple(self._ordinary(None)), scored=False)
        if self.name == "bench_idle":
            self.now_ms += 2 * 3600 * 1000
        for t in range(self.scored_steps):
            self.now_ms += STEP_MS
            cases: tuple[Case, ...] = ()
            if self.inject and t % CASE_EVERY == CASE_EVERY // 2:
                cases = (self._case(),)
            yield Step(self.now_ms, tuple(self._ordinary(t)), cases)


def bench_plan(accounts: int, count: int, start: int = 0) -> list[tuple[int, int, int]]:
    """``scripts/bench``'s transfers: (sender index, receiver index, amount), round-robin over
    ``accounts``, each paying the next account 1 unit; ``start`` continues an earlier plan."""
    if accounts < 2:
        raise ScenarioError("bench needs at least 2 accounts")
    if count < 0:
        raise ScenarioError("count must be >= 0")
    return [((start + j) % accounts, (start + j + 1) % accounts, 1) for j in range(count)]
