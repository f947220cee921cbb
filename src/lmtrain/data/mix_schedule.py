"""Which source supplies each block of a weighted mixture: :class:`MixSchedule`, a pure function of
(weights, seed, position), and :func:`permute`, the keyed permutation each pass over a source uses.

Both are stateless and vectorised (numpy), so a stream, a DataLoader worker or a resumed run computes any
position directly, with no arrays as long as the epoch.
"""

from __future__ import annotations

import math
from typing import Any, Sequence, Tuple

import numpy as np

from lmtrain.errors import ConfigError

__all__ = ["MixSchedule", "hash64", "permute"]

_U64 = np.uint64
_GOLDEN, _M1, _M2 = _U64(0x9E3779B97F4A7C15), _U64(0xBF58476D1CE4E5B9), _U64(0x94D049BB133111EB)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):  # the wrap-around is the point (numpy warns on 0-d values)
        z = x + _GOLDEN
        z = (z ^ (z >> _U64(30))) * _M1
        z = (z ^ (z >> _U64(27))) * _M2
    return z ^ (z >> _U64(31))


def hash64(*parts: Any) -> np.ndarray:
    """A 64-bit hash of integer arrays (broadcast together), elementwise."""
    h = np.zeros((), dtype=np.uint64)
    for part in parts:
        arr = np.asarray(part)
        if arr.dtype != np.uint64:  # (seeds may be negative: two's complement)
            arr = arr.astype(np.int64).astype(np.uint64)
        h = _mix64(h ^ arr)
    return h


def _unit(h: np.ndarray) -> np.ndarray:
    """Hashes -> floats in [0, 1)."""
    return (h >> _U64(11)).astype(np.float64) * 2.0**-53


class MixSchedule:
    """Which source supplies global block position p = 0, 1, 2, ...: pure, resumable, low-discrepancy.

    Positions are grouped in windows of ``window`` slots. The number of slots of source k among
    positions [0, B) at a window boundary B is round(S_k B) - round(S_{k-1} B) (S: cumulative weights),
    so it is within 1 of weight_k * B and the windows' counts add up exactly. Inside a window each
    source's slots sit at evenly spaced keys (i + u_k) / n_k, with a phase u_k seeded by (seed, window,
    k), so every prefix stays within about 2 blocks of weight_k * p and the seed changes the order.
    """

    def __init__(self, weights: Sequence[float], seed: int = 0) -> None:
        w = np.asarray(weights, dtype=np.float64).ravel()
        if w.size == 0 or not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise ConfigError(f"mixture weights must be positive numbers, got {list(weights)}")
        self.weights = w / w.sum()
        self.seed = int(seed)
        self.num_sources = int(w.size)
        self.window = max(256, math.ceil(8 / float(self.weights.min())))
        cum = np.concatenate([[0.0], np.cumsum(self.weights)])
        cum[-1] = 1.0  # so that the counts at a boundary B add up to exactly B
        self._cum = cum

    def _before(self, starts: np.ndarray) -> np.ndarray:
        """(U, K) blocks of each source among positions [0, start), for window boundaries `starts`."""
        r = np.floor(self._cum[None, :] * starts[:, None].astype(np.float64) + 0.5).astype(np.int64)
        return np.diff(r, axis=1)

    def _windows(self, m: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For windows `m` (U,): the source of each slot (U, W), which draw of it inside the window
        (U, W), and the blocks of each source before the window (U, K)."""
        W, K, U = self.window, self.num_sources, len(m)
        base = self._before(m * W)
        n = self._before((m + 1) * W) - base  # >= 7 each: W * weight_k >= 8
        cs = np.zeros((U, K + 1), dtype=np.int64)
        np.cumsum(n, axis=1, out=cs[:, 1:])
        rows = np.arange(U, dtype=np.int64)
        # slot j of row r belongs to source k when cs[r, k] <= j < cs[r, k+1]: one sorted search for all rows
        bounds = (cs[:, 1:] + rows[:, None] * W).ravel()
        slots = np.arange(W, dtype=np.int64)
        label = np.searchsorted(bounds, (rows[:, None] * W + slots[None, :]).ravel(), side="right")
        label = label.reshape(U, W) - rows[:, None] * K
        draw = slots[None, :] - np.take_along_axis(cs, label, axis=1)
        ks = np.arange(K, dtype=np.int64)
        phase = _unit(hash64(self.seed, m[:, None], ks[None, :], 1))
        tie = hash64(self.seed, m[:, None], ks[None, :], 2)
        key = (draw + np.take_along_axis(phase, label, axis=1)) / np.take_along_axis(n, label, axis=1)
        order = np.lexsort((np.take_along_axis(tie, label, axis=1), key), axis=-1)
        return np.take_along_axis(label, order, 1), np.take_along_axis(draw, order, 1), base

    def lookup(self, positions: Any) -> Tuple[np.ndarray, np.ndarray]:
        """(sources, local_index) of `positions` in one pass."""
        p = np.asarray(positions, dtype=np.int64)
        flat = p.ravel()
        src = np.empty(flat.size, dtype=np.int64)
        local = np.empty(flat.size, dtype=np.int64)
        if flat.size == 0:
            return src.reshape(p.shape), local.reshape(p.shape)
        if flat.min() < 0:
            raise IndexError(f"mixture positions must be >= 0, got {int(flat.min())}")
        W = self.window
        m, t = np.divmod(flat, W)
        windows, inv = np.unique(m, return_inverse=True)
        inv = inv.ravel()
        by_window = np.argsort(inv, kind="stable")
        sorted_inv = inv[by_window]
        chunk = max(1, (1 << 18) // W)  # windows at a time: tens of MB at most, for any number of positions
        for a in range(0, len(windows), chunk):
            b = min(a + chunk, len(windows))
            lo, hi = np.searchsorted(sorted_inv, [a, b])
            sel = by_window[lo:hi]
            slot_src, slot_draw, base = self._windows(windows[a:b])
            row, col = inv[sel] - a, t[sel]
            src[sel] = slot_src[row, col]
            local[sel] = base[row, src[sel]] + slot_draw[row, col]
        return src.reshape(p.shape), local.reshape(p.shape)

    def sources(self, positions: np.ndarray) -> np.ndarray:
        """The source (0..K-1, int64) of each position."""
        return self.lookup(positions)[0]

    def local_index(self, positions: np.ndarray) -> np.ndarray:
        """For each position, how many earlier positions the same source supplied (which draw of it it is)."""
        return self.lookup(positions)[1]

    def counts(self, n: int) -> np.ndarray:
        """Blocks of each source among positions [0, n) (int64, length K)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        m, t = divmod(int(n), self.window)
        out = self._before(np.array([m * self.window], dtype=np.int64))[0]
        if t:
            slot_src, _, _ = self._windows(np.array([m], dtype=np.int64))
            out = out + np.bincount(slot_src[0, :t], minlength=self.num_sources)
        return out

    def __repr__(self) -> str:
        return f"MixSchedule(weights={np.round(self.weights, 4).tolist()}, seed={self.seed}, window={self.window})"


def permute(index: np.ndarray, n: int, key: np.ndarray) -> np.ndarray:
    """A keyed bijection of [0, n), elementwise: a 4-round Feistel network over the smallest even number
    of bits that holds n, cycle-walking values that land outside [0, n). O(1) memory for any n."""
    if n <= 1:
        return np.zeros_like(index)
    half = max(1, (int(n - 1).bit_length() + 1) // 2)
    mask = _U64((1 << half) - 1)
    x = index.astype(np.uint64)
    key = np.broadcast_to(key, x.shape).astype(np.uint64)
    todo = np.ones(x.shape, dtype=bool)
    while todo.any():
        y, k = x[todo], key[todo]
        left, right = y >> _U64(half), y & mask
        for rnd in range(4):
            left, right = right, left ^ (hash64(k, right, rnd) & mask)
        x[todo] = (left << _U64(half)) | right
        todo = x >= _U64(n)
    return x.astype(np.int64)
