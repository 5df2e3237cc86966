"""Checks and prepares a reference recording for cloning: a pure function of the samples.

:func:`prepare_reference` trims leading and trailing silence, measures level,
clipping and an SNR estimate, picks the best window when the speech is longer than
allowed, and levels the result. Every refusal is a :class:`ReferenceRejected`
(422) whose ``code`` names the reason, so a client can tell the user what to fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from voicemesh.errors import ReferenceRejected

# ReferenceRejected is named here too (it lives with the whole error tree).
__all__ = [
    "FRAME_S",
    "PreparedReference",
    "ReferenceLimits",
    "ReferenceRejected",
    "best_window",
    "clipped_ratio",
    "estimate_snr_db",
    "frame_energies_db",
    "prepare_reference",
]

FRAME_S = 0.02
"""Analysis frame for energy, speech activity and SNR."""
_PAD_S = 0.1
_EPS = 1e-10


@dataclass(frozen=True)
class ReferenceLimits:
    """What a usable reference looks like."""

    min_s: float = 3.0
    """Shortest speech after trimming silence."""
    max_s: float = 10.0
    """Longest speech kept; longer recordings keep their best window of this length."""
    silence_dbfs: float = -50.0
    """Frames quieter than this (and 35 dB under the loudest) count as silence."""
    min_level_dbfs: float = -40.0
    """Speech quieter than this on average is refused as too quiet."""
    max_clipped_ratio: float = 0.002
    """Share of samples at full scale above which the recording is refused as clipped."""
    min_snr_db: float = 12.0
    """Estimated speech-to-noise ratio below which the recording is refused as noisy."""
    target_dbfs: float = -20.0
    """Level the stored reference is normalised to."""


@dataclass
class PreparedReference:
    """A checked reference: the samples to store and what was measured."""

    audio: np.ndarray
    sample_rate: int
    duration_s: float
    level_dbfs: float
    peak: float
    clipped_ratio: float
    snr_db: float
    trimmed_from_s: float
    trimmed_to_s: float
    warnings: list[str] = field(default_factory=list)

    def report(self) -> dict[str, object]:
        """The measurements as the API shows them."""
        return {
            "duration_s": round(self.duration_s, 3),
            "sample_rate": self.sample_rate,
            "level_dbfs": round(self.level_dbfs, 1),
            "peak": round(self.peak, 4),
            "clipped_ratio": round(self.clipped_ratio, 5),
            "snr_db": round(self.snr_db, 1),
            "kept_from_s": round(self.trimmed_from_s, 3),
            "kept_to_s": round(self.trimmed_to_s, 3),
            "warnings": list(self.warnings),
        }


def frame_energies_db(x: np.ndarray, rate: int) -> np.ndarray:
    """Mean-square energy of each analysis frame, in dBFS."""
    hop = max(1, round(FRAME_S * rate))
    frames = x.size // hop
    if frames == 0:
        return np.zeros(0)
    blocks = x[: frames * hop].astype(np.float64).reshape(frames, hop)
    power = np.mean(blocks * blocks, axis=1)
    energies: np.ndarray = 10.0 * np.log10(power + _EPS)
    return energies


def clipped_ratio(x: np.ndarray, threshold: float = 0.99) -> float:
    """Share of samples at or near full scale, counted only in runs of 3 or more."""
    if x.size == 0:
        return 0.0
    hot = np.abs(x) >= threshold
    # One full-scale sample is a loud peak; a run of them is a flattened waveform.
    runs = hot[:-2] & hot[1:-1] & hot[2:]
    return float(np.count_nonzero(runs)) / x.size


def estimate_snr_db(energies_db: np.ndarray) -> float:
    """Speech-to-noise estimate: loud frames (90th percentile) over quiet ones (10th)."""
    if energies_db.size < 5:
        return 0.0
    loud = float(np.percentile(energies_db, 90))
    quiet = float(np.percentile(energies_db, 10))
    return max(0.0, loud - quiet)


def _speech_mask(energies_db: np.ndarray, limits: ReferenceLimits) -> np.ndarray:
    threshold = max(limits.silence_dbfs, float(energies_db.max()) - 35.0)
    mask: np.ndarray = energies_db > threshold
    return mask


def best_window(mask: np.ndarray, frames: int) -> int:
    """First frame of the ``frames``-long window holding the most speech frames."""
    if mask.size <= frames:
        return 0
    counts = np.convolve(mask.astype(np.int32), np.ones(frames, dtype=np.int32), mode="valid")
    return int(np.argmax(counts))


def prepare_reference(
    x: np.ndarray, rate: int, limits: ReferenceLimits | None = None
) -> PreparedReference:
    """Check a mono recording and return the part to clone from, levelled; or refuse it."""
    limits = limits or ReferenceLimits()
    x = np.asarray(x, dtype=np.float32)
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ReferenceRejected("the recording holds no usable samples", code="empty_reference")
    hop = max(1, round(FRAME_S * rate))
    energies = frame_energies_db(x, rate)
    if energies.size == 0 or float(energies.max()) <= limits.silence_dbfs:
        raise ReferenceRejected(
            f"the recording is silent (no part louder than {limits.silence_dbfs:g} dBFS)",
            code="silent_reference",
        )
    mask = _speech_mask(energies, limits)
    voiced = np.flatnonzero(mask)
    pad = round(_PAD_S / FRAME_S)
    first = max(0, int(voiced[0]) - pad)
    last = min(energies.size, int(voiced[-1]) + 1 + pad)
    warnings: list[str] = []
    max_frames = round(limits.max_s / FRAME_S)
    if last - first > max_frames:
        start = first + best_window(mask[first:last], max_frames)
        end_s = (start + max_frames) * FRAME_S
        warnings.append(
            f"the speech is {(last - first) * FRAME_S:.1f} s long; kept the best "
            f"{limits.max_s:g} s window ({start * FRAME_S:.1f}-{end_s:.1f} s)"
        )
        first, last = start, start + max_frames
    duration = (last - first) * FRAME_S
    if duration < limits.min_s:
        raise ReferenceRejected(
            f"the speech is {duration:.1f} s long after trimming silence; at least "
            f"{limits.min_s:g} s is needed",
            code="reference_too_short",
        )
    kept = x[first * hop : last * hop]
    kept_energies = energies[first:last]
    kept_mask = mask[first:last]
    speech_power = np.mean(10.0 ** (kept_energies[kept_mask] / 10.0))
    level = 10.0 * math.log10(float(speech_power) + _EPS)
    if level < limits.min_level_dbfs:
        raise ReferenceRejected(
            f"the speech is too quiet ({level:.1f} dBFS; at least {limits.min_level_dbfs:g} "
            "dBFS is needed): record closer to the microphone",
            code="reference_too_quiet",
        )
    clipped = clipped_ratio(kept)
    if clipped > limits.max_clipped_ratio:
        raise ReferenceRejected(
            f"the recording is clipped ({clipped * 100:.2f}% of samples at full scale; at most "
            f"{limits.max_clipped_ratio * 100:.2f}%): lower the input gain",
            code="reference_clipped",
        )
    snr = estimate_snr_db(energies)
    if snr < limits.min_snr_db:
        raise ReferenceRejected(
            f"the recording is too noisy (estimated SNR {snr:.1f} dB; at least "
            f"{limits.min_snr_db:g} dB is needed)",
            code="reference_noisy",
        )
    peak = float(np.max(np.abs(kept)))
    gain = 10.0 ** ((limits.target_dbfs - level) / 20.0)
    gain = min(gain, 0.95 / max(peak, _EPS))  # never clip while levelling
    levelled = (kept * gain).astype(np.float32)
    return PreparedReference(
        audio=levelled,
        sample_rate=rate,
        duration_s=duration,
        level_dbfs=level,
        peak=peak,
        clipped_ratio=clipped,
        snr_db=snr,
        trimmed_from_s=first * FRAME_S,
        trimmed_to_s=last * FRAME_S,
        warnings=warnings,
    )
