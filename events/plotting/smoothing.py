"""Smoothing (rolling mean, TensorBoard's debiased EMA) and decimation for plotting.

Smoothing always runs on every point; only then is a long curve thinned to what a figure can
show, with the min/max of each bin kept as an envelope so spikes stay visible.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Tuple

import numpy as np

__all__ = ["SmoothSpec", "parse_smooth", "smooth", "rolling_mean", "ema_debiased", "envelope", "thin"]


@dataclass(frozen=True)
class SmoothSpec:
    """How to smooth: ``kind`` is ``"none"``, ``"rolling"`` (``window`` points; 0 = auto) or
    ``"ema"`` (``weight`` in [0, 1), TensorBoard's slider)."""

    kind: str = "rolling"
    window: int = 0
    weight: float = 0.0

    def describe(self) -> str:
        if self.kind == "none":
            return "no smoothing"
        if self.kind == "ema":
            return f"debiased EMA {self.weight:g}"
        return f"rolling mean of {self.window}" if self.window else "rolling mean of 2% of the points"


def parse_smooth(text: str) -> SmoothSpec:
    """``auto`` | ``none`` | ``N`` (rolling window of N points) | ``ema:W`` or ``0.W`` (EMA weight W)."""
    token = str(text).strip().lower()
    if token in ("auto", ""):
        return SmoothSpec("rolling", 0)
    if token in ("none", "0", "1", "off"):
        return SmoothSpec("none")
    if token.startswith("ema"):
        token = token[3:].lstrip(":=") or "0.6"
    try:
        number = float(token)
    except ValueError:
        raise ValueError(f"--smooth {text!r}: use auto, none, a window like 20, or ema:0.9") from None
    if 0.0 <= number < 1.0:
        return SmoothSpec("ema", weight=number)
    if number >= 1.0 and number.is_integer():
        return SmoothSpec("rolling", int(number))
    raise ValueError(f"--smooth {text!r}: a window must be a whole number of points, an EMA weight in [0, 1)")


def rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """``[n]`` trailing mean over ``window`` points (fewer at the start); NaN points are skipped
    in the means and stay NaN themselves."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if window <= 1 or len(values) == 0:
        return values.copy()
    sums = np.cumsum(np.where(finite, values, 0.0))
    counts = np.cumsum(finite)
    upper = np.arange(len(values))
    lower = upper - window
    window_sums = sums - np.where(lower >= 0, sums[np.maximum(lower, 0)], 0.0)
    window_counts = counts - np.where(lower >= 0, counts[np.maximum(lower, 0)], 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = window_sums / window_counts
    out[~finite] = np.nan
    return out


def ema_debiased(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's smoothing: ``last = last * w + (1 - w) * v`` over finite points, divided by
    ``1 - w ** k`` (k = finite points so far) so the start is not pulled to 0. ``[n]`` in and out;
    non-finite points stay as they are and do not enter the average."""
    values = np.asarray(values, dtype=np.float64)
    out = values.copy()
    finite = np.isfinite(values)
    x = values[finite]
    if weight <= 0.0 or len(x) == 0:
        return out
    # Blockwise closed form of the recurrence: within a block of B points,
    # y[j] = w^(j+1) * y[-1] + (1 - w) * w^j * cumsum(w^-i * x[i]); B keeps w^-B below 1e12.
    block = max(1, int(27.6 / -math.log(weight)))
    powers = weight ** np.arange(block, dtype=np.float64)
    smoothed = np.empty_like(x)
    carry = 0.0
    for start in range(0, len(x), block):
        chunk = x[start: start + block]
        p = powers[: len(chunk)]
        partial = (1.0 - weight) * p * np.cumsum(chunk / p)
        smoothed[start: start + len(chunk)] = partial + carry * weight * p
        carry = smoothed[start + len(chunk) - 1]
    smoothed /= 1.0 - weight ** np.arange(1, len(x) + 1, dtype=np.float64)
    out[finite] = smoothed
    return out


def smooth(values: np.ndarray, spec: SmoothSpec) -> np.ndarray:
    """``values`` (``[n]``) smoothed as ``spec`` says; ``auto`` windows are ~2% of n."""
    if spec.kind == "ema":
        return ema_debiased(values, spec.weight)
    if spec.kind == "rolling":
        window = spec.window or max(1, len(values) // 50)
        return rolling_mean(values, window)
    return np.asarray(values, dtype=np.float64)


def _bins(n: int, max_points: int) -> int:
    return max(1, math.ceil(n / max(1, max_points)))


def envelope(x: np.ndarray, y: np.ndarray, max_points: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x_mid, low, high)``, each ``[<= max_points]``: the min and max of ``y`` in consecutive bins.

    With n <= max_points every point is its own bin. NaN/inf points are ignored (an all-NaN bin
    gives NaN, a gap in the band).
    """
    size = _bins(len(y), max_points)
    if size == 1:
        return x, y, y
    bins = math.ceil(len(y) / size)
    pad = bins * size - len(y)
    finite_y = np.where(np.isfinite(y), y, np.nan)
    padded = np.concatenate([finite_y, np.full(pad, np.nan)]).reshape(bins, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN bin is an expected gap
        low = np.nanmin(padded, axis=1)
        high = np.nanmax(padded, axis=1)
    x_mid = np.concatenate([x, np.full(pad, x[-1])]).reshape(bins, size).mean(axis=1)
    return x_mid, low, high


def thin(x: np.ndarray, y: np.ndarray, max_points: int) -> Tuple[np.ndarray, np.ndarray]:
    """Every k-th point of a (smoothed) curve so that at most ~max_points remain, last point kept."""
    size = _bins(len(y), max_points)
    if size == 1:
        return x, y
    index = np.arange(0, len(y), size)
    if index[-1] != len(y) - 1:
        index = np.append(index, len(y) - 1)
    return x[index], y[index]

