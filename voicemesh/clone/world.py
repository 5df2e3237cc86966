"""Moves synthetic speech toward a reference speaker with the WORLD vocoder (``pyworld``).

The CPU fallback cannot clone a voice; it can make a stock VITS voice sound more
like the reference: WORLD splits speech into pitch (F0), spectral envelope and
aperiodicity, and :func:`adapt_toward` changes the first two and resynthesises.

* Pitch: log-F0 is mapped so its mean and spread match the reference's
  (``(lf0 - mu_src) * sd_ref / sd_src + mu_ref``).
* Envelope: a frequency warp (the ratio of vocal-tract lengths, estimated by
  matching the two speakers' mean log envelopes) moves the formants, then a
  smooth per-frequency gain corrects the remaining average timbre (the mean
  log-envelope difference, liftered to its broad shape and capped).

Both speakers are described by :class:`SpeakerStats`, computed once per voice.
The result is an approximation of the speaker, and is labelled as one.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_LOGGER = logging.getLogger(__name__)

FRAME_PERIOD_MS = 5.0
GRID_HZ = np.linspace(0.0, 8000.0, 321)
"""Common frequency axis on which speakers' envelopes are compared (25 Hz steps)."""
_WARP_CANDIDATES = np.linspace(0.87, 1.15, 29)
_FIT_BAND_HZ = (150.0, 5000.0)
_LIFTER = 24
_MAX_GAIN_DB = 12.0


@dataclass(frozen=True)
class SpeakerStats:
    """What the adaptation needs to know about a speaker."""

    lf0_mean: float
    """Mean natural-log F0 over voiced frames."""
    lf0_std: float
    """Standard deviation of log F0 over voiced frames."""
    mean_log_env: np.ndarray
    """Mean natural-log spectral envelope of voiced frames on :data:`GRID_HZ`."""

    @property
    def f0_hz(self) -> float:
        """Typical pitch (geometric mean of F0)."""
        return float(np.exp(self.lf0_mean))


@dataclass(frozen=True)
class AdaptStrength:
    """How far to move toward the reference (1.0: all the way)."""

    pitch: float = 0.5
    """Share of the log-F0 mean shift applied (0.7 moved a male voice most of the way to a
    female reference's pitch, where WORLD's resynthesis turns buzzy and Whisper base
    mishears more; 0.5 kept the similarity, 0.602 against 0.606, with fewer errors)."""
    spread: float = 0.5
    """Share of the log-F0 spread change applied."""
    warp: float = 0.5
    """Share of the formant warp applied (in log-frequency-ratio); the full warp often sits
    at the search's 1.15 cap and smears consonants, half of it keeps most of the timbre."""
    timbre: float = 0.7
    """Share of the residual envelope gain applied."""


def _world_analysis(x: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import pyworld

    x64 = np.ascontiguousarray(x, dtype=np.float64)
    # Harvest: fewer voicing errors than DIO, which the resynthesis would turn into buzz.
    f0, times = pyworld.harvest(
        x64, rate, frame_period=FRAME_PERIOD_MS, f0_floor=60.0, f0_ceil=600.0
    )
    sp = pyworld.cheaptrick(x64, f0, times, rate)
    ap = pyworld.d4c(x64, f0, times, rate)
    return f0, sp, ap


def _on_grid(sp: np.ndarray, rate: int, grid: np.ndarray = GRID_HZ) -> np.ndarray:
    """Log envelopes (frames x bins) resampled onto a frequency grid."""
    bins = np.linspace(0.0, rate / 2.0, sp.shape[1])
    log_sp = np.log(np.maximum(sp, 1e-16))
    return (
        np.stack([np.interp(grid, bins, frame) for frame in log_sp])
        if len(log_sp)
        else (np.zeros((0, grid.size)))
    )


def _stats_from(f0: np.ndarray, sp: np.ndarray, rate: int) -> SpeakerStats:
    voiced = f0 > 0
    if np.count_nonzero(voiced) < 10:
        raise ValueError("too little voiced speech to describe the speaker")
    lf0 = np.log(f0[voiced])
    env = _on_grid(sp[voiced], rate).mean(axis=0)
    return SpeakerStats(
        lf0_mean=float(lf0.mean()), lf0_std=float(max(lf0.std(), 1e-3)), mean_log_env=env
    )


def stats_path(reference: Path) -> Path:
    """Where a reference's speaker statistics are kept: beside it, on the same volume, so
    every replica reads what one measured (Harvest takes seconds per reference)."""
    return reference.with_name(f"{reference.stem}.speaker.npz")


def save_stats(stats: SpeakerStats, path: Path) -> None:
    """Write ``stats`` to ``path`` atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with tmp.open("wb") as out:
        np.savez(
            out,
            lf0_mean=stats.lf0_mean,
            lf0_std=stats.lf0_std,
            mean_log_env=stats.mean_log_env,
        )
    os.replace(tmp, path)


def load_stats(path: Path) -> SpeakerStats | None:
    """Statistics saved by :func:`save_stats`; None when absent or unreadable."""
    try:
        with np.load(path) as data:
            env = np.asarray(data["mean_log_env"], dtype=np.float64)
            if env.shape != GRID_HZ.shape:
                return None
            return SpeakerStats(float(data["lf0_mean"]), float(data["lf0_std"]), env)
    except (OSError, KeyError, ValueError):
        return None


def analyze_speaker(x: np.ndarray, rate: int) -> SpeakerStats:
    """Pitch statistics and mean envelope of a recording (ValueError if it has no voicing)."""
    f0, sp, _ = _world_analysis(x, rate)
    return _stats_from(f0, sp, rate)


def _band(grid: np.ndarray = GRID_HZ) -> np.ndarray:
    mask: np.ndarray = (grid >= _FIT_BAND_HZ[0]) & (grid <= _FIT_BAND_HZ[1])
    return mask


def _warp_env(log_env: np.ndarray, alpha: float, grid: np.ndarray = GRID_HZ) -> np.ndarray:
    """Envelope with formants moved by ``alpha`` (>1: up, shorter vocal tract)."""
    warped: np.ndarray = np.interp(grid / alpha, grid, log_env)
    return warped


def estimate_warp(source: SpeakerStats, target: SpeakerStats) -> float:
    """Formant scaling that best maps the source's mean envelope onto the target's."""
    band = _band()

    def shape(env: np.ndarray) -> np.ndarray:
        part: np.ndarray = env[band]
        centred: np.ndarray = part - part.mean()
        return centred

    goal = shape(target.mean_log_env)
    errors = [
        float(np.mean((shape(_warp_env(source.mean_log_env, a)) - goal) ** 2))
        for a in _WARP_CANDIDATES
    ]
    return float(_WARP_CANDIDATES[int(np.argmin(errors))])


def _smooth(curve: np.ndarray, lifter: int = _LIFTER) -> np.ndarray:
    """Keep the broad shape of a curve over frequency (low cosine coefficients)."""
    from scipy.fft import dct, idct

    coeffs = dct(curve, norm="ortho")
    coeffs[lifter:] = 0.0
    smooth: np.ndarray = idct(coeffs, norm="ortho")
    return smooth


def timbre_gain(source: SpeakerStats, target: SpeakerStats, alpha: float) -> np.ndarray:
    """Per-frequency log gain on :data:`GRID_HZ` left after the warp (level removed, capped)."""
    diff = target.mean_log_env - _warp_env(source.mean_log_env, alpha)
    diff = diff - diff[_band()].mean()  # loudness is levelled separately
    cap = _MAX_GAIN_DB / 20.0 * np.log(10.0) * 2.0  # dB of amplitude -> natural log of power
    gain: np.ndarray = np.clip(_smooth(diff), -cap, cap)
    return gain


def adapt_toward(
    x: np.ndarray,
    rate: int,
    source: SpeakerStats,
    target: SpeakerStats,
    strength: AdaptStrength | None = None,
) -> np.ndarray:
    """Resynthesise ``x`` with the target's pitch statistics and envelope; float32 at ``rate``."""
    import pyworld

    strength = strength or AdaptStrength()
    if x.size < rate // 10:
        return np.asarray(x, dtype=np.float32)
    f0, sp, ap = _world_analysis(x, rate)
    voiced = f0 > 0
    new_f0 = f0.copy()
    if np.any(voiced):
        ratio = (target.lf0_std / source.lf0_std) ** strength.spread
        shift = (target.lf0_mean - source.lf0_mean) * strength.pitch
        lf0 = np.log(f0[voiced])
        new_f0[voiced] = np.exp(source.lf0_mean + shift + (lf0 - source.lf0_mean) * ratio)
    alpha = float(np.exp(np.log(estimate_warp(source, target)) * strength.warp))
    gain_grid = timbre_gain(source, target, alpha) * strength.timbre
    bins = np.linspace(0.0, rate / 2.0, sp.shape[1])
    # Past the grid's top the last gain holds: VITS voices carry little energy up there.
    gain = np.interp(bins, GRID_HZ, gain_grid)
    log_sp = np.log(np.maximum(sp, 1e-16))
    warped = np.stack([np.interp(bins / alpha, bins, frame) for frame in log_sp])
    new_sp = np.exp(warped + gain[None, :])
    y = pyworld.synthesize(
        new_f0, np.ascontiguousarray(new_sp), ap, rate, frame_period=FRAME_PERIOD_MS
    )
    y = y[: x.size]
    # Keep the loudness of the input: WORLD and the gain change the level.
    rms_in = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-9)
    rms_out = float(np.sqrt(np.mean(np.square(y))) + 1e-9)
    y = y * (rms_in / rms_out)
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    if peak > 0.99:
        y = y * (0.99 / peak)
    _LOGGER.debug("adapted: F0 %.0f->%.0f Hz, warp %.3f", source.f0_hz, target.f0_hz, alpha)
    out: np.ndarray = y.astype(np.float32)
    return out
