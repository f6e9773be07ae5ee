"""Detector tests on generated payment traffic with injected abnormal transfers.

Ordinary traffic: a population of accounts, each with its own typical amount (log-normal across
accounts), paying mostly a few regular counterparties at its own pace, with the usual fee. Abnormal
kinds: ``huge`` (hundreds to thousands of times the sender's typical amount to a regular
counterparty), ``burst`` (a dozen-plus transfers within seconds, each to a fresh address), and
``drain`` (an account's whole balance, 50-300x its typical amount, to a fresh address).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from ml.features import FANOUT_WINDOW_MS, INDEX, _phrase
from node.detect import detector as detector_module
from node.detect.detector import Detector, DetectorConfig, Verdict, training_seed
from node.detect.history import TxContext


@dataclass(frozen=True, slots=True)
class FakeTx:
    kind: str
    sender_address: bytes
    to: bytes
    amount: int
    fee: int
    nonce: int
    hash: bytes = field(default=b"")


@dataclass(frozen=True, slots=True)
class FakeHeader:
    height: int
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class FakeBlock:
    header: FakeHeader
    txs: tuple[FakeTx, ...]


def address(tag: str) -> bytes:
    return hashlib.sha256(tag.encode()).digest()[:20]


@dataclass(slots=True)
class _Account:
    addr: bytes
    typical: float
    favorites: list[bytes]
    nonce: int = 0


class Traffic:
    """A deterministic stream of ordinary txs (and abnormal ones on request), one
    block per second.
    """

    def __init__(self, seed: int, accounts: int = 200, per_block: int = 6) -> None:
        self.rng = random.Random(seed)
        self.accounts = [
            _Account(address(f"acct-{seed}-{i}"), 10 ** self.rng.uniform(1.5, 4.5), [])
            for i in range(accounts)
        ]
        addrs = [a.addr for a in self.accounts]
        for a in self.accounts:
            a.favorites = self.rng.sample(addrs, 4)
        self.per_block = per_block
        self.height = 0
        self.now_ms = 1_700_000_000_000
        self.fresh = 0
        self.count = 0

    def _tx(self, acct: _Account, to: bytes, amount: int, kind: str = "transfer") -> FakeTx:
        fee = 10 if self.rng.random() < 0.8 else self.rng.choice((5, 12, 20))
        self.count += 1
        tx = FakeTx(
            kind, acct.addr, to, max(1, amount), fee, acct.nonce, address(f"tx{self.count}")
        )
        acct.nonce += 1
        return tx

    def ordinary(self) -> FakeTx:
        acct = self.rng.choice(self.accounts)
        if self.rng.random() < 0.03:
            self.count += 1
            tx = FakeTx("anchor", acct.addr, b"", 0, 10, acct.nonce, address(f"tx{self.count}"))
            acct.nonce += 1
            return tx
        r = self.rng.random()
        if r < 0.85:
            to = self.rng.choice(acct.favorites)
        elif r < 0.97:
            to = self.rng.choice(self.accounts).addr
        else:
            to = self._fresh()
        amount = round(acct.typical * self.rng.lognormvariate(0.0, 0.6))
        return self._tx(acct, to, amount)

    def _fresh(self) -> bytes:
        self.fresh += 1
        return address(f"fresh-{self.fresh}-{self.rng.random()}")

    def abnormal(self, kind: str) -> list[FakeTx]:
        acct = self.rng.choice(self.accounts)
        if kind == "huge":
            factor = 10 ** self.rng.uniform(2.7, 3.7)
            return [self._tx(acct, self.rng.choice(acct.favorites), round(acct.typical * factor))]
        if kind == "drain":
            factor = self.rng.uniform(50, 300)
            return [self._tx(acct, self._fresh(), round(acct.typical * factor))]
        if kind == "burst":
            n = self.rng.randint(12, 20)
            return [
                self._tx(acct, self._fresh(), round(acct.typical * self.rng.lognormvariate(0, 0.6)))
                for _ in range(n)
            ]
        raise ValueError(kind)

    def block(self, txs: list[FakeTx]) -> FakeBlock:
        self.height += 1
        self.now_ms += 1000
        return FakeBlock(FakeHeader(self.height, self.now_ms), tuple(txs))

    def ordinary_blocks(self, n: int) -> Iterator[FakeBlock]:
        for _ in range(n):
            yield self.block([self.ordinary() for _ in range(self.per_block)])


def train_if_due(detector: Detector, height: int) -> None:
    if detector.needs_training(height):
        X, seed = detector.train_snapshot()
        detector.install_model(detector.fit(X, seed), height)


KINDS = ("huge", "drain", "burst")


@functools.cache
def run_traffic(seed: int) -> tuple[float, dict[str, float], list[Verdict], float]:
    """500 blocks of ordinary history, then 300 blocks scored at admission with an abnormal
    case every 10 blocks; quarantined txs are not committed. Returns (false-quarantine rate,
    recall per kind, verdicts of the abnormal txs, false-quarantine rate of follow-ups).

    A follow-up is an ordinary tx whose sender made an abnormal case less than the fan-out window
    (10 min) ago: its fan-out is still above anything in the window, so holding it is by design
    (the account just paid a dozen fresh addresses), not a false alarm about ordinary traffic."""
    traffic = Traffic(seed)
    det = Detector(DetectorConfig(retrain_every_blocks=100))
    det.note_addresses([a.addr for a in traffic.accounts])
    for block in traffic.ordinary_blocks(500):
        det.observe_block(block)
        train_if_due(det, block.header.height)
    ordinary = quarantined = follow_ups = follow_ups_held = 0
    flagged: dict[bytes, int] = {}  # sender -> time of its last abnormal case
    hits = {k: [0, 0] for k in KINDS}
    abnormal: list[Verdict] = []
    for i in range(300):
        txs = [traffic.ordinary() for _ in range(traffic.per_block)]
        verdicts = det.score_batch(txs, traffic.now_ms + 500)
        for tx, v in zip(txs, verdicts, strict=True):
            since = flagged.get(tx.sender_address)
            if since is not None and traffic.now_ms - since < FANOUT_WINDOW_MS:
                follow_ups += 1
                follow_ups_held += v.quarantine
            else:
                ordinary += 1
                quarantined += v.quarantine
        commit = [tx for tx, v in zip(txs, verdicts, strict=True) if not v.quarantine]
        if i % 10 == 5:
            kind = KINDS[(i // 10) % 3]
            bad = traffic.abnormal(kind)
            flagged[bad[0].sender_address] = traffic.now_ms
            found: list[Verdict] = []
            # Arrives in micro-batches of 4 over ~3 s, as admission would see it.
            for j in range(0, len(bad), 4):
                found += det.score_batch(bad[j : j + 4], traffic.now_ms + 600 + j * 150)
            # A burst is judged from its 4th tx on: the first few are ordinary payments.
            judged = found[3:] if kind == "burst" else found
            hits[kind][0] += sum(v.quarantine for v in judged)
            hits[kind][1] += len(judged)
            abnormal += found
            commit += [tx for tx, v in zip(bad, found, strict=True) if not v.quarantine]
        block = traffic.block(commit)
        det.observe_block(block)
        train_if_due(det, block.header.height)
    recall = {k: a / b for k, (a, b) in hits.items()}
    return quarantined / ordinary, recall, abnormal, follow_ups_held / max(1, follow_ups)


def test_detection_quality_on_generated_traffic() -> None:
    # Pooled over 4 seeded runs (40 huge, 40 drain, ~40 bursts of 12-20 txs, ~7000 ordinary).
    # Measured over seeds 0-7 with the 10x amount margin: false quarantine 0.105% (worst seed
    # 0.36%), recall huge 1.0, drain 0.96 (worst seed 0.8), burst 0.92; follow-ups (the
    # abnormal sender's own next txs within 10 min) held 7.7%. Before extrapolation and the
    # tail threshold (seeds 0-3): 0.20%, 0.975, 0.925, 0.65, follow-ups 2.4%.
    # Huge and drain are above the window's range of amount_vs_sender, a burst above its fan-out,
    # so they score beyond its edge (ml/calibration.py) instead of tying with its largest value.
    # Floors: false quarantine <= 0.5% (contamination 0.2%, 2.5x margin: per seed it reaches
    # 0.24%), recall >= 0.9 / 0.9 / 0.7 (a burst's first txs look ordinary), follow-ups <= 25%.
    fq_rates, recalls, follow_ups = [], [], []
    for seed in range(4):
        fq, recall, _, follow_up = run_traffic(seed)
        fq_rates.append(fq)
        recalls.append(recall)
        follow_ups.append(follow_up)
    mean = {k: sum(r[k] for r in recalls) / len(recalls) for k in KINDS}
    assert sum(fq_rates) / len(fq_rates) <= 0.005
    assert mean["huge"] >= 0.9
    assert mean["drain"] >= 0.9
    assert mean["burst"] >= 0.7
    assert sum(follow_ups) / len(follow_ups) <= 0.25


def test_quarantined_txs_carry_plain_reasons() -> None:
    _, _, verdicts, _ = run_traffic(0)
    held = [v for v in verdicts if v.quarantine]
    assert held
    for v in held:
        assert v.score > v.threshold
        assert 1 <= len(v.reasons) <= 3
    text = " | ".join(r for v in held for r in v.reasons)
    assert "the sender's median (at most" in text
    assert "never-seen address" in text


def test_warm_up_scores_but_never_quarantines() -> None:
    traffic = Traffic(5)
    det = Detector(DetectorConfig(min_train_txs=50, warmup_txs=10_000, retrain_every_blocks=10))
    for block in traffic.ordinary_blocks(30):
        det.observe_block(block)
        train_if_due(det, block.header.height)
    assert det.status()["model_version"] >= 1
    assert not det.warm
    verdicts = det.score_batch(traffic.abnormal("huge") + traffic.abnormal("drain"), traffic.now_ms)
    assert all(0.0 < v.score <= 1.0 and not v.quarantine for v in verdicts)
    assert all(v.model_version >= 1 for v in verdicts)


def test_no_model_yields_unscored_verdicts() -> None:
    traffic = Traffic(6)
    det = Detector()
    verdicts = det.score_batch([traffic.ordinary()], traffic.now_ms)
    assert verdicts == [Verdict(0.0, 1.0, False, ())]
    assert det.score_batch([], traffic.now_ms) == []
    assert not det.needs_training(1)


def test_training_is_deterministic_across_nodes_and_scheduled_by_height() -> None:
    a, b = (
        Detector(DetectorConfig(retrain_every_blocks=20, retrain_min_rows=100, retrain_slot_ms=0)),
        Detector(DetectorConfig(retrain_every_blocks=20, retrain_min_rows=100, retrain_slot_ms=0)),
    )
    blocks = list(Traffic(7).ordinary_blocks(60))
    trained = []
    for block in blocks:
        h = block.header.height
        for det in (a, b):
            det.observe_block(block)
        assert a.needs_training(h) == b.needs_training(h)
        if a.needs_training(h):
            trained.append(h)
            Xa, sa = a.train_snapshot()
            Xb, sb = b.train_snapshot()
            assert sa == sb == training_seed(h)
            assert np.array_equal(Xa, Xb)
            ma, mb = a.fit(Xa, sa), b.fit(Xb, sb)
            assert ma.threshold == mb.threshold
            a.install_model(ma, h)
            b.install_model(mb, h)
    assert trained[0] == 17  # first height with min_train_txs (100) rows at 6 txs per block
    # 34: first height with warmup_txs (200) rows, where the model that may quarantine is trained.
    assert trained[1:] == [20, 34, 40, 60]
    st = a.status()
    assert st["trained_at_height"] == 60
    assert st["model_version"] == 5
    assert st["window_size"] == 360


def test_receipts_skip_rejected_txs_and_must_match() -> None:
    traffic = Traffic(8)
    det = Detector()
    block = next(traffic.ordinary_blocks(1))
    det.observe_block(block, [True, False, True, False, True, False])
    assert det.status()["window_size"] == 3
    assert det.status()["committed_txs_seen"] == 3
    with pytest.raises(ValueError, match="one entry per tx"):
        det.observe_block(block, [True])


def test_status_reports_quantiles_and_rate() -> None:
    traffic = Traffic(9)
    det = Detector(DetectorConfig(min_train_txs=50, warmup_txs=50, retrain_every_blocks=10))
    for block in traffic.ordinary_blocks(20):
        det.observe_block(block)
        train_if_due(det, block.header.height)
    det.score_batch([traffic.ordinary() for _ in range(50)], traffic.now_ms + 100)
    st = det.status()
    q = st["score_quantiles"]
    assert 0.0 < q["p50"] <= q["p90"] <= q["p99"] <= 1.0
    assert 0.0 <= st["quarantine_rate"] <= 1.0
    assert st["scored_recent"] == 50
    assert st["warm"] is True
    assert st["threshold"] >= DetectorConfig().score_floor


def test_config_from_mapping_names_bad_keys() -> None:
    cfg = DetectorConfig.from_mapping({"contamination": 0.01, "window_txs": 100})
    assert cfg.contamination == 0.01
    assert cfg.window_txs == 100
    with pytest.raises(ValueError, match=r"detector\.bogus"):
        DetectorConfig.from_mapping({"bogus": 1})
    with pytest.raises(ValueError, match=r"detector\.window_txs"):
        DetectorConfig.from_mapping({"window_txs": 0})
    with pytest.raises(ValueError, match=r"detector\.contamination"):
        DetectorConfig.from_mapping({"contamination": 1.5})
    with pytest.raises(ValueError, match=r"detector\.enabled"):
        DetectorConfig.from_mapping({"enabled": "yes"})


def test_disabled_detector_never_quarantines() -> None:
    traffic = Traffic(10)
    det = Detector(DetectorConfig(enabled=False))
    for block in traffic.ordinary_blocks(40):
        det.observe_block(block)
        assert not det.needs_training(block.header.height)
    assert det.score_batch(traffic.abnormal("huge"), traffic.now_ms)[0].quarantine is False


def _small_window(seed: int) -> tuple[Detector, dict[str, bytes], random.Random]:
    """The e2e's warm-up: 100 transfers of 100..1000 from 40 accounts, one model on 100 rows."""
    rng = random.Random(seed)
    addrs = {f"a{k}": address(f"small-{seed}-{k}") for k in range(41)}
    det = Detector(DetectorConfig(warmup_txs=100, min_train_txs=100))
    det.note_addresses(list(addrs.values()))
    plan = [k for k in range(40) for _ in range(1 + k % 4)]
    rng.shuffle(plan)
    now, nonces = 1_700_000_000_000, [0] * 41
    for i in range(0, len(plan), 10):
        txs = []
        for k in plan[i : i + 10]:
            to = addrs[f"a{(k + 1 + rng.randrange(2)) % 40}"]
            txs.append(FakeTx("transfer", addrs[f"a{k}"], to, rng.randint(100, 1000), 1, nonces[k]))
            nonces[k] += 1
        now += 200
        block = FakeBlock(FakeHeader(i // 10 + 1, now), tuple(txs))
        det.observe_block(block)
        train_if_due(det, block.header.height)
    return det, addrs, rng


@pytest.mark.parametrize("seed", range(3))
def test_out_of_range_amounts_score_above_the_window_edge(seed: int) -> None:
    det, addrs, _ = _small_window(seed)
    assert det.warm
    assert det.status()["trained_rows"] == 100
    now = 1_800_000_000_000
    sender = addrs["a2"]
    payee = addrs["a3"]
    ladder = [1000, 2000, 10**4, 10**6, 10**11]
    txs = [FakeTx("transfer", sender, payee, a, 1, 50, address(f"l{a}")) for a in ladder]
    # One at a time: each would otherwise join the sender's pending history of the next.
    scores = [det.score_batch([tx], now)[0] for tx in txs]
    values = [v.score for v in scores]
    # Monotone once past the amount margin (twice the window's largest); near the edge the
    # plain forests decide, so 1000 and 2000 may come in either order.
    assert values[2:] == sorted(values[2:])
    assert values[-1] > values[2] > min(values[:2])
    huge = scores[-1]
    assert huge.quarantine
    assert huge.score > huge.threshold
    assert huge.reasons[0].startswith("amount is ")
    assert "above anything in the last 100 transactions" in " | ".join(huge.reasons)
    ordinary = det.score_batch(
        [FakeTx("transfer", addrs["a40"], addrs["a0"], 500, 1, 0, address("ord"))], now
    )[0]
    assert not ordinary.quarantine


def _round_robin(
    det: Detector, addrs: list[bytes], blocks: int, amount_of: Callable[[int], int], tag: str
) -> tuple[int, int, int]:
    """Bench-shaped traffic (node/tools/bench.py): account k pays k + 1, fee 1, 50 txs a block.

    Each block is first scored at admission, then committed; returns (scored while warm,
    held while warm, last block time).
    """
    nonces = [0] * len(addrs)
    now, j, held, scored = 1_700_000_000_000, 0, 0, 0
    for height in range(1, blocks + 1):
        txs = []
        for _ in range(50):
            k = j % len(addrs)
            j += 1
            to = addrs[(k + 1) % len(addrs)]
            txs.append(
                FakeTx("transfer", addrs[k], to, amount_of(k), 1, nonces[k], address(f"{tag}{j}"))
            )
            nonces[k] += 1
        verdicts = det.score_batch(txs, now + 50)
        if det.warm:
            scored += len(verdicts)
            held += sum(v.quarantine for v in verdicts)
        now += 100
        det.observe_block(FakeBlock(FakeHeader(height, now), tuple(txs)))
        train_if_due(det, height)
    return scored, held, now


def test_bench_like_uniform_traffic_is_not_quarantined() -> None:
    # node/tools/bench.py: account k pays k + 1 (round robin), fee 1, here amounts 1..10 by account.
    # Few distinct values: most rows tie on one score, which is the tail quantile; a strict
    # ">" and the tail margin keep every one of them out of the quarantine.
    addrs = [address(f"bench-{k}") for k in range(200)]
    det = Detector(DetectorConfig(retrain_every_blocks=20))
    det.note_addresses(addrs)
    scored, held, _ = _round_robin(det, addrs, 80, lambda k: 1 + k % 10, "b")
    assert scored >= 3000
    assert held == 0


def test_a_small_payment_after_a_window_of_identical_amounts_is_not_held() -> None:
    # Seen on a live cluster after scripts/bench: 5000 transfers of amount 1, then a wallet's
    # first transfer of 7 was held ("4.0x above anything"). A window with no spread says little
    # about scale, so amounts extrapolate only from 10x the window's largest; 10**11 still does.
    addrs = [address(f"same-{k}") for k in range(200)]
    det = Detector(DetectorConfig(retrain_every_blocks=20))
    det.note_addresses(addrs)
    _, _, now = _round_robin(det, addrs, 60, lambda k: 1, "s")
    assert det.warm
    newcomer = address("newcomer")
    small = FakeTx("transfer", newcomer, addrs[1], 7, 1, 0, address("small"))
    huge = FakeTx("transfer", address("other"), addrs[2], 10**11, 1, 0, address("huge"))
    v_small, v_huge = (det.score_batch([tx], now + 50)[0] for tx in (small, huge))
    assert not v_small.quarantine, v_small
    assert v_huge.quarantine
    assert v_huge.score > v_small.score


def test_verdicts_do_not_depend_on_batching_or_on_the_ordered_fast_path() -> None:
    # Scoring keeps running summaries and scores distinct subspace rows once per batch; none of
    # that may change a verdict. A batch sees the pending txs of its earlier txs, exactly as
    # one-tx batches at the same time do; and an account whose block times went backwards (so
    # its events are scanned in full) scores like one scanned from the newest event back.
    traffic = Traffic(5)
    det = Detector(DetectorConfig(retrain_every_blocks=100))
    det.note_addresses([a.addr for a in traffic.accounts])
    for block in traffic.ordinary_blocks(300):
        det.observe_block(block)
        train_if_due(det, block.header.height)
    assert det.warm
    txs = [traffic.ordinary() for _ in range(40)] + traffic.abnormal("burst")
    txs += traffic.abnormal("huge") + traffic.abnormal("drain")
    unordered = copy.deepcopy(det)
    for acct in unordered._history._accounts.values():
        acct.ordered = False
    one_by_one = copy.deepcopy(det)
    now = traffic.now_ms + 500
    batched = det.score_batch(txs, now)
    singles = [one_by_one.score_batch([tx], now)[0] for tx in txs]
    scanned = unordered.score_batch(txs, now)
    assert sum(v.quarantine for v in batched) >= 3
    for a, b, c in zip(batched, singles, scanned, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-12) == c.score
        assert a.quarantine == b.quarantine == c.quarantine
        assert a.all_reasons() == b.all_reasons() == c.all_reasons()


def test_a_deferred_reason_keeps_only_the_count_and_earliest_of_the_rate_timestamps() -> None:
    """A verdict cache of 100,000 txs kept each one's rate timestamps (up to 64: ~0.5 KB a
    tx); the rate phrase reads only how many and the earliest, and says the same packed."""
    now = 1_700_000_000_000
    stamps = tuple(now - 9_000 + 150 * k for k in range(60))
    context = TxContext(5, 1, False, now, 70, 69, 5.0, stamps[-1], stamps, 1, 70, 0)
    packed = detector_module._pack_context(context)
    assert len(packed) == len(context)
    assert len(packed[detector_module.RATE_AT]) == 2
    again = detector_module._unpack_context(packed)
    x = np.zeros(len(INDEX))
    x[INDEX["rate_vs_network"]] = 4.0
    said = _phrase("rate_vs_network", x, context.facts(), context.sender())
    assert said is not None
    assert said.startswith("61 transactions in 9 s")
    assert _phrase("rate_vs_network", x, again.facts(), again.sender()) == said
    assert again._replace(rate_timestamps_ms=stamps) == context
    few = context._replace(rate_timestamps_ms=(now - 5,))
    assert detector_module._pack_context(few) == few


def test_only_the_last_models_are_kept_for_deferred_reasons() -> None:
    """Each deferred reason held its scoring model (~4.6 MB): a cache of verdicts kept every
    model that scored one alive. The detector keeps MODELS_KEPT; older txs say so instead."""
    traffic = Traffic(11)
    cfg = DetectorConfig(
        retrain_every_blocks=10,
        retrain_min_rows=10,
        retrain_slot_ms=0,
        min_train_txs=50,
        warmup_txs=10**9,
    )
    det = Detector(cfg)
    det.note_addresses([a.addr for a in traffic.accounts])
    for block in traffic.ordinary_blocks(60):
        det.observe_block(block)
        train_if_due(det, block.header.height)
    [v] = det.score_batch(traffic.abnormal("drain"), traffic.now_ms)
    assert not v.reasons
    assert v.later is not None
    first = v.all_reasons()
    assert first
    assert first != detector_module.REASONS_GONE
    versions = det.status()["model_version"]
    for k in range(detector_module.MODELS_KEPT):
        assert v.all_reasons() == first  # its model is still kept
        for block in traffic.ordinary_blocks(10):
            det.observe_block(block)
            train_if_due(det, block.header.height)
        assert det.status()["model_version"] == versions + k + 1
    assert v.all_reasons() == detector_module.REASONS_GONE
