"""Bootstrap 95 % intervals for every number a protocol reports (``scipy.stats.bootstrap``, seeded).

Each headline number is a statistic of per-sample scores; its interval comes from resampling the units the
benchmark draws independently:
- one sample (``bootstrap_ci([scores], np.mean)``): the units themselves (questions, images, prompts);
- several strata (``stratified=True``): each stratum resampled on its own, for numbers built from stratum means
  such as GenEval's mean over tags, GEdit's mean over task types and WISE's weighted group mean;
- paired arrays (``paired=True``): the same rows of every array, for statistics of aligned columns
  (POPE's precision from predictions and labels).

Percentile intervals (not BCa): BCa's jackknife costs one statistic call per sample, which for thousands of
samples outweighs the protocol itself; the percentile interval is what most benchmark papers report. A
degenerate input (fewer than two units, or no spread) gets the point estimate as both ends instead of scipy's
NaN and warning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

NUM_RESAMPLES = 2000
CONFIDENCE = 0.95


def bootstrap_ci(
    samples: Sequence[Sequence[float]],
    statistic: Callable[..., np.ndarray],
    seed: int = 0,
    stratified: bool = False,
    paired: bool = False,
    num_resamples: int = NUM_RESAMPLES,
) -> tuple[float, list[float]]:
    """``(point estimate, [low, high])`` of ``statistic(*samples, axis=-1)`` (it must be vectorised over
    ``axis``). ``samples`` is a list of 1-D arrays: strata (``stratified``), aligned columns (``paired``) or
    one array."""
    arrays = [np.asarray(s, dtype=np.float64) for s in samples]
    if not arrays or any(a.ndim != 1 for a in arrays):
        raise ValueError("bootstrap_ci takes a list of 1-D arrays")
    if not all(a.size for a in arrays):
        return math.nan, [math.nan, math.nan]
    point = float(np.asarray(statistic(*[a[None, :] for a in arrays], axis=-1)).reshape(-1)[0])
    if math.isnan(point):
        return point, [math.nan, math.nan]
    if all(a.size < 2 for a in arrays) or all(np.ptp(a) == 0 for a in arrays if a.size):
        return point, [point, point]
    if stratified and paired:
        raise ValueError("a bootstrap is either stratified (independent strata) or paired (aligned columns)")
    resampled, fn = arrays, statistic
    if stratified and any(a.size < 2 for a in arrays):
        # A stratum of one unit cannot be resampled: it enters every resample unchanged.
        varying = [i for i, a in enumerate(arrays) if a.size >= 2]
        resampled = [arrays[i] for i in varying]

        def fn(*drawn: np.ndarray, axis: int = -1) -> np.ndarray:
            batch = drawn[0].shape[:-1]
            full = [np.broadcast_to(a, batch + a.shape) for a in arrays]
            for i, d in zip(varying, drawn):
                full[i] = d
            return statistic(*full, axis=axis)

    with warnings.catch_warnings():
        # Strata with no spread make scipy warn about a degenerate distribution; the interval is still right.
        warnings.simplefilter("ignore", category=stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", category=RuntimeWarning)
        result = stats.bootstrap(
            resampled, fn, n_resamples=num_resamples, vectorized=True, paired=paired, axis=-1,
            confidence_level=CONFIDENCE, method="percentile", rng=np.random.default_rng(seed),
        )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if math.isnan(low) or math.isnan(high):
        return point, [point, point]
    return point, [min(low, point), max(high, point)]


def mean_of(*arrays: np.ndarray, axis: int = -1) -> np.ndarray:
    """The mean of one array (the plain accuracy / average score)."""
    return np.mean(arrays[0], axis=axis)


def mean_of_means(*strata: np.ndarray, axis: int = -1) -> np.ndarray:
    """The unweighted mean of per-stratum means (GenEval over tags, GEdit over task types)."""
    return np.mean([np.mean(s, axis=axis) for s in strata], axis=0)


def weighted_mean_of_means(weights: Sequence[float]) -> Callable[..., np.ndarray]:
    """Per-stratum means combined with fixed ``weights`` (renormalised to sum to one), e.g. WISE's overall."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()

    def statistic(*strata: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.sum([wi * np.mean(s, axis=axis) for wi, s in zip(w, strata)], axis=0)

    return statistic


def number(value: float, ci: Sequence[float]) -> dict:
    """The JSON form of a reported number: ``{"value", "ci95": [low, high]}``."""
    return {"value": _clean(value), "ci95": [_clean(ci[0]), _clean(ci[1])]}


def _clean(x: float) -> float | None:
    """NaN becomes null: JSON has no NaN, and a missing number must read as missing."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def mean_number(scores: Sequence[float], seed: int = 0) -> dict:
    """``number`` for the plain mean of ``scores``."""
    return number(*bootstrap_ci([scores], mean_of, seed))


def sum_of_means(*strata: np.ndarray, axis: int = -1) -> np.ndarray:
    """The sum of per-stratum means (MME's total: the sum of its subtask scores)."""
    return np.sum([np.mean(s, axis=axis) for s in strata], axis=0)
