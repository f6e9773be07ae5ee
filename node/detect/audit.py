"""Audit of a hold: rebuild the model from the chain alone and score the recorded features again.

A model is a pure function of the chain: the history folded from ``WindowSpec.history_from``, the
window of the last ``rows`` rows up to ``last_height``, the detector config and the seed derived
from ``last_height``. Its id (``model_id_of``) hashes exactly those. A quarantine record keeps the
id, the feature vector and the reasons' context, so ``explain`` can show that the recorded score
and reasons follow from the chain: same id, same score to the last bit, same reasons.

Pure: the caller reads the blocks (a live node in a worker thread, or ``vigil admin detector
explain --db`` on a stopped node's database).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml.features import FEATURE_NAMES, reasons
from node.detect.detector import BlockLike, Detector, DetectorConfig, WindowSpec, model_id_of
from node.detect.history import TxContext
from node.detect.model import TrainedModel


class AuditError(Exception):
    """The chain at hand cannot rebuild this model (too short, pruned, another config)."""


@dataclass(frozen=True, slots=True)
class Explained:
    model_id: bytes
    score: float
    threshold: float
    reasons: tuple[str, ...]
    features: dict[str, float]


def rebuild(
    cfg: DetectorConfig,
    spec: WindowSpec,
    genesis_addresses: Sequence[bytes],
    blocks: Iterable[tuple[BlockLike, Sequence[bool] | None]],
) -> TrainedModel:
    """Fold ``blocks`` (heights ``history_from..last_height``, in order) and fit the model."""
    det = Detector(cfg)
    det.note_addresses(genesis_addresses)
    expected = spec.history_from
    for block, ok in blocks:
        if block.header.height != expected:
            raise AuditError(f"block {expected} missing (got {block.header.height})")
        det.observe_block(block, ok)
        expected += 1
        if block.header.height == spec.last_height:
            break
    if expected != spec.last_height + 1:
        raise AuditError(f"the chain ends before height {spec.last_height}")
    try:
        rows = det.window_rows()
    except ValueError:
        raise AuditError(f"no training rows up to height {spec.last_height}") from None
    if len(rows) < spec.rows:
        raise AuditError(
            f"only {len(rows)} rows up to {spec.last_height}, the model had {spec.rows}"
        )
    return det.fit(np.ascontiguousarray(rows[len(rows) - spec.rows :]), spec.seed)


def explain(
    model: TrainedModel,
    cfg: DetectorConfig,
    spec: WindowSpec,
    features: Sequence[float],
    context: Sequence[Any],
) -> Explained:
    """The rebuilt model's score, threshold and reasons for a recorded feature vector."""
    x = np.array([list(features)], dtype=np.float64)
    scores, odds = model.score_detail(x)
    excess = model.contributions(x)[0]
    ctx = TxContext._make(context)
    found = reasons(
        x[0],
        excess,
        ctx.facts(),
        ctx.sender(),
        cfg.reasons_max,
        odds=odds[0],
        high=model.ranges.high if model.ranges is not None else None,
        window_rows=model.rows,
    )
    return Explained(
        model_id_of(spec, cfg),
        float(scores[0]),
        model.threshold,
        tuple(found),
        dict(zip(FEATURE_NAMES, (float(v) for v in x[0]), strict=True)),
    )
