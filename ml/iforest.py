"""Isolation forest (Liu, Ting and Zhou, ICDM 2008) in pure numpy, built and scored level by level.

Layout. Every tree is stored as a complete binary tree of height ``limit = ceil(log2 psi)`` in heap
order, one flat array per level holding all trees side by side: node ``p`` of tree ``t`` at level
``L`` sits at ``t * 2**L + p`` and its children at ``2 * that`` and ``2 * that + 1``. An external
node above the bottom level becomes a chain of pass-through nodes (threshold ``+inf``, so every
row goes left) that ends in one bottom slot holding the paper's ``depth + c(size)``. Scoring is then
exactly ``limit`` rounds of gathers over a (rows x trees) index array, with no per-row or per-tree
Python loop, and building is the same sweep over all trees at once (Algorithms 1 and 2 of the
paper, level-synchronous).

Convention: a row goes right when ``x >= threshold``, left otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from ml.arrays import BoolArray, FloatArray, IntArray

EULER_GAMMA = 0.5772156649015329
# How many times a node redraws a feature that is constant inside it before falling back to an
# exact scan of the node's columns. Redrawing costs one gather over the node's rows; scanning costs
# rows x columns, which is what the fit-time budget cannot afford at every node.
FEATURE_RETRIES = 8
# Rows x trees elements scored per round: the five buffers of that size (about 1 MB) stay in L2.
SCORE_CHUNK_ELEMENTS = 1 << 15
# Up to this many rows x trees, numpy's per-call overhead (about a microsecond), not arithmetic, is
# the cost of scoring, so it goes BLOCK_LEVELS levels per round: all fifteen comparisons of the
# row's four-level subtree at once, packed into a 16-bit code, then one table look-up. Four levels
# make the usual depth limit of 8 (psi = 256) two rounds instead of three at three levels. Measured
# at 100 trees, this path wins up to about six rows; from eight on, the chunked walk is faster.
SMALL_BATCH_ELEMENTS = 1 << 9
BLOCK_LEVELS = 4
# A four-level subtree has 15 nodes; the 16th slot is padding (threshold +inf: never goes right) so
# that each (row, tree) packs into exactly two bytes.
BLOCK_SLOTS = 1 << BLOCK_LEVELS


def _block_exit() -> npt.NDArray[np.uint8]:
    """For each 16-bit code of a four-level subtree's comparisons (bit k: node k in heap order goes
    right; bit 15, the padding slot, unused), the subtree's exit at its fourth level (0..15): the
    level-by-level walk."""
    codes = np.arange(1 << BLOCK_SLOTS, dtype=np.intp)
    local = np.zeros(codes.size, dtype=np.intp)
    for level in range(BLOCK_LEVELS):
        heap = (1 << level) - 1 + local  # the node reached at this level, in heap order
        local = 2 * local + ((codes >> heap) & 1)
    return local.astype(np.uint8)


# 64 KiB, so the random look-ups of a small batch stay in L2.
BLOCK_EXIT = _block_exit()


def average_path_length(n: npt.ArrayLike) -> FloatArray:
    """c(n): the average path length of an unsuccessful BST search among n points (paper eq. 1)."""
    m = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(m)
    big = m > 2
    nb = m[big]
    out[big] = 2.0 * (np.log(nb - 1.0) + EULER_GAMMA) - 2.0 * (nb - 1.0) / nb
    out[m == 2] = 1.0
    return out


def check_matrix(X: npt.ArrayLike, n_features: int | None = None) -> FloatArray:
    """X as a C-contiguous float64 matrix, or ValueError naming what is wrong with it."""
    arr = np.asarray(X)
    if arr.dtype.kind not in "biuf":  # bool, signed and unsigned integers, floating point
        raise ValueError(f"X must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"X must be 2-D (rows x features), got {arr.ndim}-D")
    if arr.shape[0] < 1:
        raise ValueError("X must have at least one row")
    if arr.shape[1] < 1:
        raise ValueError("X must have at least one feature column")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(f"X has {arr.shape[1]} features, the forest was fit on {n_features}")
    out = np.ascontiguousarray(arr, dtype=np.float64)
    # count_nonzero, not .all(): the same answer without the ufunc-reduction set-up, which was
    # most of this function's cost for a single row.
    if np.count_nonzero(np.isfinite(out)) != out.size:
        raise ValueError("X must be finite (no NaN or infinity)")
    return out


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class IsolationForest:
    """``IsolationForest(n_trees, sample_size, seed).fit(X).score(X)``; higher = more anomalous."""

    def __init__(self, n_trees: int = 100, sample_size: int = 256, seed: int = 0) -> None:
        self.n_trees = _positive_int("n_trees", n_trees)
        self.sample_size = _positive_int("sample_size", sample_size)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self.n_features = 0
        self.psi = 0
        self.limit = 0
        self._feature: list[IntArray] = []  # per level: split feature of each node
        self._threshold: list[FloatArray] = []  # per level: split value (+inf = pass-through)
        self._bits: list[FloatArray] = []  # per level: log2 of parent size over node size
        self._leaf: FloatArray = np.zeros(0)  # bottom level: depth + c(size)
        self._c_psi = 0.0
        # For small batches, per block of four levels starting at level L = 0, 4, 8...: the
        # subtree under each node of level L, 16 slots in heap order (unused ones never go right).
        self._block_feature: list[IntArray] = []  # (nodes at level L) x 16
        self._block_threshold: list[FloatArray] = []
        # The first block flattened, and the level index of each tree's first node below it: every
        # row starts in the same subtrees, so the first round needs no index arithmetic.
        self._root_feature: IntArray = np.zeros(0, dtype=np.intp)
        self._root_threshold: FloatArray = np.zeros(0)
        self._root_base: IntArray = np.zeros(0, dtype=np.intp)
        # One-column forests only: E[h(x)] is a step function of x that changes only at split
        # thresholds, so it is tabulated at fit time and scoring is a binary search.
        self._steps: FloatArray | None = None  # sorted distinct finite thresholds
        self._step_lengths: FloatArray = np.zeros(0)  # E[h] below steps[0], then from each step

    @property
    def fitted(self) -> bool:
        return self.psi > 0

    @property
    def c_psi(self) -> float:
        """c(psi), the score's normaliser (0.0 before ``fit``): computed once, at fit time."""
        return self._c_psi

    # --- training ---------------------------------------------------------------------------

    def fit(self, X: npt.ArrayLike, pause: Callable[[], None] | None = None) -> IsolationForest:
        """Grow ``n_trees`` trees, each on ``psi = min(sample_size, n)`` rows drawn without
        replacement, to height ``ceil(log2 psi)`` (Algorithms 1 and 2).

        ``pause``, when given, is called after each level: the caller's chance to yield the CPU
        between steps of a few milliseconds (node/host/fitting.py ``Pacer``). It changes nothing
        in the forest."""
        data = check_matrix(X)
        n, d = data.shape
        flat = data.ravel()
        rng = np.random.default_rng(self.seed)
        trees = self.n_trees
        psi = min(self.sample_size, n)
        limit = math.ceil(math.log2(psi)) if psi > 1 else 0

        if psi == n:
            rows = np.tile(np.arange(n, dtype=np.intp), trees)
        else:
            rows = np.concatenate(
                [rng.choice(n, size=psi, replace=False).astype(np.intp) for _ in range(trees)]
            )
        keys = np.repeat(np.arange(trees, dtype=np.intp), psi)  # sorted node key of each sample

        features: list[IntArray] = []
        thresholds: list[FloatArray] = []
        bits: list[FloatArray] = [np.zeros(trees)]
        leaf = np.zeros(trees << limit)
        exists = np.ones(trees, dtype=np.bool_)
        count_prev = np.zeros(0, dtype=np.intp)
        for level in range(limit + 1):
            width = trees << level
            count = np.bincount(keys, minlength=width)
            if level > 0:
                parent = count_prev[np.arange(width) >> 1]
                level_bits = np.where(exists, np.log2((parent + 1.0) / (count + 1.0)), 0.0)
                bits.append(level_bits)
            split = np.zeros(width, dtype=np.bool_)
            if level < limit:
                feature = np.zeros(width, dtype=np.intp)
                threshold = np.full(width, np.inf)
                keep = count[keys] >= 2
                rows, keys = rows[keep], keys[keep]
                nodes = np.flatnonzero(count >= 2)
                if nodes.size:
                    chosen, low, high, ok = self._choose_splits(
                        rng, data, flat, rows, keys, nodes, count
                    )
                    nodes, chosen, low, high = nodes[ok], chosen[ok], low[ok], high[ok]
                    cut = low + rng.random(nodes.size) * (high - low)
                    feature[nodes] = chosen
                    threshold[nodes] = cut
                    split[nodes] = True
                    # Rows of nodes that turned out constant in every column stop here.
                    live = split[keys]
                    rows, keys = rows[live], keys[live]
                    right = flat[rows * d + feature[keys]] >= threshold[keys]
                    keys = 2 * keys + right
                    order = np.argsort(keys, kind="stable")
                    rows, keys = rows[order], keys[order]
                features.append(feature)
                thresholds.append(threshold)
            ends = np.flatnonzero(exists & ~split)
            leaf[ends << (limit - level)] = level + average_path_length(count[ends])
            child = np.zeros(width * 2, dtype=np.bool_)
            child[2 * np.flatnonzero(split)] = True
            child[2 * np.flatnonzero(split) + 1] = True
            exists, count_prev = child, count
            if pause is not None:
                pause()

        self._feature, self._threshold, self._bits, self._leaf = features, thresholds, bits, leaf
        self.n_features, self.psi, self.limit = d, psi, limit
        self._c_psi = float(average_path_length(psi))
        self._steps = None
        self._stack_blocks()
        if d == 1:
            self._tabulate()
        return self

    def _stack_blocks(self) -> None:
        """Regroup the levels into four-level subtrees, 16 slots each, for ``_traverse_small``."""
        self._block_feature, self._block_threshold = [], []
        for start in range(0, self.limit, BLOCK_LEVELS):
            roots = self.n_trees << start
            feature = np.zeros((roots, BLOCK_SLOTS), dtype=np.intp)
            threshold = np.full((roots, BLOCK_SLOTS), np.inf)
            for depth in range(min(BLOCK_LEVELS, self.limit - start)):
                width = 1 << depth
                heap = slice(width - 1, 2 * width - 1)
                feature[:, heap] = self._feature[start + depth].reshape(roots, width)
                threshold[:, heap] = self._threshold[start + depth].reshape(roots, width)
            self._block_feature.append(feature)
            self._block_threshold.append(threshold)
        if self._block_feature:
            self._root_feature = self._block_feature[0].ravel()
            self._root_threshold = self._block_threshold[0].ravel()
        first = min(BLOCK_LEVELS, self.limit)
        self._root_base = (np.arange(self.n_trees, dtype=np.intp) << first)[None, :]

    def _tabulate(self) -> None:
        """E[h(x)] of a one-column forest on each interval between consecutive thresholds.

        Every split compares ``x >= t``, so all x in ``[steps[k], steps[k+1])`` take the same
        path in every tree as ``steps[k]`` itself, and all x below ``steps[0]`` the same as
        ``-inf``: traversing those representatives gives the exact path lengths of any x.
        """
        cuts = np.concatenate(self._threshold) if self._threshold else np.zeros(0)
        steps = np.unique(cuts[np.isfinite(cuts)])
        below = np.array([-np.inf if steps.size else 0.0])
        self._step_lengths = self._traverse(np.concatenate((below, steps))[:, None])
        self._steps = steps

    def _choose_splits(
        self,
        rng: np.random.Generator,
        data: FloatArray,
        flat: FloatArray,
        rows: IntArray,
        keys: IntArray,
        nodes: IntArray,
        count: IntArray,
    ) -> tuple[IntArray, FloatArray, FloatArray, npt.NDArray[np.bool_]]:
        """A uniformly random feature that is not constant in each node, with its min and max.

        Rejection sampling: draw a feature, redraw where it is constant inside the node. That is
        uniform over the node's non-constant features, like a full scan, at the cost of a gather
        per round instead of rows x columns; the few nodes still undecided get the exact scan.
        ``ok`` is False where every column is constant (duplicate rows): an external node.
        """
        d = data.shape[1]
        starts = np.concatenate(([0], np.cumsum(count[nodes])[:-1])).astype(np.intp)
        slot = np.zeros(count.size, dtype=np.intp)
        slot[nodes] = np.arange(nodes.size)
        sample_slot = slot[keys]
        chosen = rng.integers(0, d, size=nodes.size).astype(np.intp)
        ok = np.ones(nodes.size, dtype=np.bool_)
        low = np.empty(nodes.size)
        high = np.empty(nodes.size)
        todo = np.arange(nodes.size)
        for attempt in range(FEATURE_RETRIES + 1):
            values = flat[rows * d + chosen[sample_slot]]
            low_all = np.minimum.reduceat(values, starts)
            high_all = np.maximum.reduceat(values, starts)
            low[todo], high[todo] = low_all[todo], high_all[todo]
            todo = todo[low[todo] == high[todo]]
            if todo.size == 0 or d == 1:
                break
            if attempt < FEATURE_RETRIES:
                chosen[todo] = rng.integers(0, d, size=todo.size)
        for i in todo.tolist():
            block = data[rows[starts[i] : starts[i] + count[nodes[i]]]]
            lo, hi = block.min(axis=0), block.max(axis=0)
            varying = np.flatnonzero(hi > lo)
            if varying.size == 0:
                ok[i] = False
                continue
            f = int(varying[rng.integers(0, varying.size)])
            chosen[i], low[i], high[i] = f, lo[f], hi[f]
        return chosen, low, high, ok

    # --- scoring ----------------------------------------------------------------------------

    def _check_fitted(self, X: npt.ArrayLike) -> FloatArray:
        if not self.fitted:
            raise ValueError("the forest is not fitted: call fit(X) first")
        return check_matrix(X, self.n_features)

    def path_lengths(self, X: npt.ArrayLike) -> FloatArray:
        """E[h(x)]: each row's path length averaged over the trees."""
        data = self._check_fitted(X)
        if self._steps is not None:
            at = np.searchsorted(self._steps, data[:, 0], side="right")
            lengths: FloatArray = self._step_lengths.take(at)
            return lengths
        return self._traverse(data)

    def _traverse(self, data: FloatArray) -> FloatArray:
        """Path lengths by walking every tree, level by level, for a chunk of rows at a time.

        One (rows x trees) index array walks all trees at once; each level is seven passes over
        it (gather feature, add row offset, gather value, gather threshold, compare, double, add),
        all into buffers allocated once, sized so that they stay in the L2 cache. The leaf sums
        run over a C-ordered (rows x trees) array, so every row's sum adds in the same order
        whatever the chunking.
        """
        n, d = data.shape
        trees = self.n_trees
        features, thresholds, leaf = self._feature, self._threshold, self._leaf
        if n * trees <= SMALL_BATCH_ELEMENTS or self.limit == 0:
            return self._traverse_small(data)
        out = np.empty(n)
        chunk = max(1, min(n, SCORE_CHUNK_ELEMENTS // trees))
        tree_left = np.arange(trees, dtype=np.intp) << 1  # level-1 index of each root's left child
        # Offset of each row's first value in the chunk, one per (row, tree): a contiguous add is
        # twice as fast as a broadcast one.
        offsets = np.repeat(np.arange(0, chunk * d, d, dtype=np.intp)[:, None], trees, axis=1)
        node_buf = np.empty((chunk, trees), dtype=np.intp)
        cell_buf = np.empty((chunk, trees), dtype=np.intp)
        value_buf = np.empty((chunk, trees))
        cut_buf = np.empty((chunk, trees))
        right_buf = np.empty((chunk, trees), dtype=np.bool_)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            rows = stop - start
            node, cell, value, cut, right = (
                node_buf[:rows],
                cell_buf[:rows],
                value_buf[:rows],
                cut_buf[:rows],
                right_buf[:rows],
            )
            block = data[start:stop]
            flat = block.ravel()
            # Level 0 holds one node per tree: a column gather, no index arithmetic.
            block.take(features[0], axis=1, out=value, mode="clip")
            np.greater_equal(value, thresholds[0], out=right)
            np.add(tree_left, right, out=node)
            base = offsets[:rows]
            for level in range(1, self.limit):
                features[level].take(node, out=cell, mode="clip")
                np.add(cell, base, out=cell)
                flat.take(cell, out=value, mode="clip")
                thresholds[level].take(node, out=cut, mode="clip")
                np.greater_equal(value, cut, out=right)
                np.left_shift(node, 1, out=node)
                np.add(node, right, out=node)
            leaf.take(node, out=value, mode="clip")
            np.sum(value, axis=1, out=out[start:stop])
        out /= trees
        return out

    def _traverse_small(self, data: FloatArray) -> FloatArray:
        """``_traverse`` for a few rows in about eight numpy calls per four levels.

        Each round gathers the 16 slots of the subtree every (row, tree) is in, compares them all
        (the same ``x >= threshold`` as level by level), packs the 16 results into a two-byte code
        and looks up the subtree's exit: the node four levels down. A single row (the latency
        that matters) skips the row offsets and reshapes: broadcasting against the (1, trees)
        root offsets gives its (1, trees) shape. Gathers use mode="wrap": every index is in
        range, and that mode's check is the cheapest.
        """
        n, d = data.shape
        limit = self.limit
        node = self._root_base  # (1, trees)
        if limit > 0:  # the first round: the same subtrees for every row, so one column gather
            bits = data.take(self._root_feature, axis=1, mode="wrap") >= self._root_threshold
            node = self._exits(bits, limit, n) + node
        if limit > BLOCK_LEVELS:
            flat = data.ravel()
            offsets = np.arange(0, n * d, d, dtype=np.intp)[:, None, None] if n > 1 else None
            for block in range(1, len(self._block_feature)):
                feature = self._block_feature[block].take(node, axis=0)
                if offsets is not None:
                    feature += offsets
                threshold = self._block_threshold[block].take(node, axis=0)
                bits = flat.take(feature, mode="wrap") >= threshold
                depth = min(BLOCK_LEVELS, limit - block * BLOCK_LEVELS)
                node <<= depth
                node += self._exits(bits, depth, n)
        lengths: FloatArray = self._leaf.take(node).sum(axis=1)
        if lengths.size < n:  # psi = 1: no round ran, node is still (1, trees)
            lengths = np.repeat(lengths, n)
        lengths /= self.n_trees
        return lengths

    @staticmethod
    def _exits(bits: BoolArray, depth: int, n: int) -> npt.NDArray[np.uint8]:
        """The exit of each 16-slot subtree from its comparisons (C order, 16 per subtree), at
        ``depth`` (<= BLOCK_LEVELS) levels down, as (n, trees) or, for one row, (trees,).
        Little-endian bit order puts slot k on bit k of the subtree's two bytes."""
        codes = np.packbits(bits, bitorder="little").view("<u2")
        exits: npt.NDArray[np.uint8] = BLOCK_EXIT.take(codes, mode="wrap")
        if depth < BLOCK_LEVELS:  # unused slots went left: drop the levels below the trees
            exits >>= BLOCK_LEVELS - depth
        return exits.reshape(n, -1) if n > 1 else exits

    def score(self, X: npt.ArrayLike) -> FloatArray:
        """s(x, psi) = 2^(-E[h(x)] / c(psi)) in (0, 1]; 0.5 everywhere when psi = 1."""
        h = self.path_lengths(X)
        if self._c_psi <= 0.0:
            return np.full(h.shape, 0.5)
        # h / -c is -h / c exactly (IEEE division is sign-symmetric), one pass fewer; h is this
        # call's own array, so both passes write into it.
        np.divide(h, -self._c_psi, out=h)
        scores: FloatArray = np.exp2(h, out=h)
        return scores

    def explain(self, X: npt.ArrayLike) -> FloatArray:
        """Per row and feature: how much splits on that feature isolated the row, in bits.

        Each split a row passes charges its feature ``log2((parent size + 1) / (child size + 1))``
        (training rows): ~1 bit for an even split, many bits where the row falls on the near-empty
        side, which is what an early isolation looks like. Averaged over trees; a row's total is
        about ``log2(psi / leaf size)``, so the columns say which features did the isolating.
        """
        data = self._check_fitted(X)
        n, d = data.shape
        flat = data.ravel()
        trees = self.n_trees
        base = (np.arange(n, dtype=np.intp) * d)[:, None]
        idx = np.tile(np.arange(trees, dtype=np.intp), (n, 1))
        total = np.zeros(n * d)
        for level in range(self.limit):
            f = self._feature[level].take(idx)
            cell = f + base
            right = flat.take(cell) >= self._threshold[level].take(idx)
            idx = 2 * idx + right
            total += np.bincount(
                cell.ravel(), weights=self._bits[level + 1].take(idx).ravel(), minlength=n * d
            )
        contributions: FloatArray = total.reshape(n, d) / trees
        return contributions
