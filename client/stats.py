"""Latency statistics of one streaming session, and of many (the benchmark's summary).

Definitions (times in seconds, measured on the client):

* first-token latency: first audio frame sent -> first partial or final with text;
* chunk latency: for every partial and final, receive time minus the time the frame
  holding the audio at the message's ``end`` was sent (what a speaker waits for text
  about what they just said);
* end-to-end latency: the frame holding the last sample of the caller's audio sent ->
  the last final received (trailing silence the client adds is not counted; it can be
  negative when the server endpointed during silence at the end of the audio);
* jitter: mean absolute difference between consecutive chunk latencies (RFC 3550 style);
* send time: wall time from the first frame sent to the frame holding the last sample
  of the caller's audio (about the audio's length at real-time pace, far less with
  ``--fast``);
* RTF: wall time from the first frame sent to the last final, over seconds of the
  caller's audio (at real-time pace about 1 + end-to-end / duration);
* real time: the server kept up. At real-time pace, the last final arrived at most
  ``slack_s`` after the caller's audio ended; as fast as possible, RTF below 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from client.streaming import StreamResult

DEFAULT_SLACK_S = 2.0


def distribution(values: list[float]) -> dict[str, float | int | None]:
    """count, mean, median, p95, p99, min, max of ``values`` (None when empty)."""
    if not values:
        return {
            "count": 0,
            "mean": None,
            "median": None,
            "p95": None,
            "p99": None,
            "min": None,
            "max": None,
        }
    array = np.asarray(values, dtype=np.float64)
    return {
        "count": int(array.size),
        "mean": round(float(array.mean()), 4),
        "median": round(float(np.median(array)), 4),
        "p95": round(float(np.percentile(array, 95)), 4),
        "p99": round(float(np.percentile(array, 99)), 4),
        "min": round(float(array.min()), 4),
        "max": round(float(array.max()), 4),
    }


def chunk_latencies(result: StreamResult) -> list[tuple[float, float, str]]:
    """(receive time, latency, type) for every partial and final with an ``end`` time."""
    out = []
    for received, message in result.messages:
        if message.get("type") not in ("partial", "final") or "end" not in message:
            continue
        sent = result.sent_at(float(message["end"]))
        if sent is not None:
            out.append((received, max(0.0, received - sent), message["type"]))
    return out


def jitter(latencies: list[float]) -> float | None:
    """Mean absolute difference of consecutive latencies; None with fewer than two."""
    if len(latencies) < 2:
        return None
    return round(float(np.mean(np.abs(np.diff(latencies)))), 4)


def session_stats(
    result: StreamResult, *, realtime: bool, slack_s: float = DEFAULT_SLACK_S
) -> dict[str, Any]:
    """Every number the benchmark reports for one session."""
    texts = [
        t for t, m in result.messages if m.get("type") in ("partial", "final") and m.get("text")
    ]
    finals = result.timed("final")
    chunks = chunk_latencies(result)
    latencies = [latency for _, latency, _ in chunks]
    final_latencies = [latency for _, latency, kind in chunks if kind == "final"]
    speech_s = result.speech_seconds or result.sent_seconds
    done = finals[-1][0] if finals else None
    audio_done = result.sent_at(speech_s) if speech_s else None
    e2e = round(done - audio_done, 4) if done is not None and audio_done is not None else None
    rtf = round(done / speech_s, 4) if done is not None and speech_s else None
    if e2e is None:
        real_time = False
    elif realtime:
        real_time = e2e <= slack_s
    else:
        real_time = rtf is not None and rtf < 1.0
    return {
        "first_token_latency_s": round(texts[0], 4) if texts else None,
        "end_to_end_latency_s": e2e,
        "chunk_latency_s": distribution(latencies),
        "final_latency_s": distribution(final_latencies),
        "server_final_latency_ms": distribution(
            [float(m["latency_ms"]) for _, m in finals if "latency_ms" in m]
        ),
        "jitter_s": jitter(latencies),
        "audio_s": round(result.sent_seconds, 3),
        "speech_s": round(result.speech_seconds, 3),
        "wall_s": round(done, 4) if done is not None else None,
        "send_s": round(audio_done, 4) if audio_done is not None else None,
        "rtf": rtf,
        "is_real_time": real_time,
        "realtime_pacing": realtime,
        "partials": len(result.of_type("partial")),
        "finals": len(finals),
        "errors": [m for m in result.of_type("error")],
        "failovers": len(result.of_type("failover")),
        "transcript": result.transcript,
    }


def _values(sessions: list[dict[str, Any]], key: str) -> list[float]:
    return [float(s[key]) for s in sessions if s.get(key) is not None]


def summarize(sessions: list[dict[str, Any]], failed: int = 0) -> dict[str, Any]:
    """Aggregate of many sessions' stats: p50/p95 of the headline numbers."""
    chunk: list[float] = []
    for s in sessions:
        chunk.extend(s.get("_chunk_values", []))
    return {
        "sessions": len(sessions) + failed,
        "completed": len(sessions),
        "failed": failed,
        "first_token_latency_s": distribution(_values(sessions, "first_token_latency_s")),
        "end_to_end_latency_s": distribution(_values(sessions, "end_to_end_latency_s")),
        "rtf": distribution(_values(sessions, "rtf")),
        "jitter_s": distribution(_values(sessions, "jitter_s")),
        "chunk_latency_s": distribution(chunk),
        "all_real_time": bool(sessions)
        and failed == 0
        and all(s["is_real_time"] for s in sessions),
        "real_time_sessions": sum(1 for s in sessions if s["is_real_time"]),
    }
