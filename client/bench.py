"""``voicemesh-client bench``: N concurrent streaming sessions and their latencies.

Sessions start ``delay_s`` apart, at most ``max_workers`` at once, each streaming the
same file (as a microphone would, or as fast as possible). Per session it writes
``client<N>_result.json`` (every message and the send/receive timeline) and
``client<N>_stats.json`` (see :mod:`client.stats`); then ``summary.json``,
``latency_histogram.png`` and ``latency_over_time.png`` in ``<output>/<run>/``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import websockets
from tqdm import tqdm

from client.stats import DEFAULT_SLACK_S, chunk_latencies, session_stats, summarize
from client.streaming import StreamResult, WireEncoding, stream_audio

_LOGGER = logging.getLogger(__name__)


@dataclass
class BenchConfig:
    """What one benchmark run does (the CLI's options)."""

    url: str
    clients: int = 4
    delay_s: float = 0.5
    max_workers: int | None = None
    timeout_s: float = 120.0
    chunk_ms: float = 40.0
    encoding: WireEncoding = "pcm_s16le"
    realtime: bool = True
    language: str | None = None
    slack_s: float = DEFAULT_SLACK_S
    headers: dict[str, str] | None = None


def _result_json(client: int, result: StreamResult) -> dict[str, Any]:
    return {
        "client": client,
        "t0_unix": result.t0,
        "sent": [
            {"t": round(t, 4), "audio_end_s": round(end, 4), "bytes": size}
            for t, end, size in result.sent
        ],
        "received": [{"t": round(t, 4), **message} for t, message in result.messages],
        "transcript": result.transcript,
    }


@dataclass
class _Session:
    """One finished session: its result and statistics."""

    index: int
    result: StreamResult
    stats: dict[str, Any]


async def _one_session(
    index: int, config: BenchConfig, audio: np.ndarray, rate: int, gate: asyncio.Semaphore
) -> _Session:
    await asyncio.sleep(index * config.delay_s)
    async with gate:
        started = time.time()
        result = await asyncio.wait_for(
            stream_audio(
                config.url,
                audio,
                sample_rate=rate,
                encoding=config.encoding,
                frame_ms=config.chunk_ms,
                realtime=config.realtime,
                language=config.language,
                timeout_s=config.timeout_s,
                extra_headers=config.headers,
            ),
            config.timeout_s + audio.size / rate,
        )
    stats = session_stats(result, realtime=config.realtime, slack_s=config.slack_s)
    stats["client"] = index
    stats["started_unix"] = round(started, 3)
    return _Session(index, result, stats)


async def _run_sessions(
    config: BenchConfig, audio: np.ndarray, rate: int, progress: bool
) -> tuple[list[_Session], list[dict[str, Any]]]:
    gate = asyncio.Semaphore(config.max_workers or config.clients)
    tasks = [
        asyncio.create_task(_one_session(i, config, audio, rate, gate))
        for i in range(config.clients)
    ]
    sessions: list[_Session] = []
    failures: list[dict[str, Any]] = []
    with tqdm(
        total=config.clients,
        desc="sessions",
        unit="session",
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        for done in asyncio.as_completed(tasks):
            try:
                session = await done
            except (OSError, TimeoutError, ValueError, websockets.WebSocketException) as exc:
                _LOGGER.warning("bench session failed: %r", exc)
                failures.append({"error": repr(exc)})
            else:
                sessions.append(session)
                e2e = session.stats["end_to_end_latency_s"]
                bar.set_postfix_str(f"last e2e {e2e:.2f} s" if e2e is not None else "no final")
            bar.update(1)
    sessions.sort(key=lambda s: s.index)
    return sessions, failures


def run_bench(
    config: BenchConfig, audio: np.ndarray, rate: int, out_dir: Path, *, progress: bool = True
) -> dict[str, Any]:
    """Run the sessions; write every file; return the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sessions, failures = asyncio.run(_run_sessions(config, audio, rate, progress))
    stats = []
    for session in sessions:
        (out_dir / f"client{session.index}_result.json").write_text(
            json.dumps(_result_json(session.index, session.result), indent=1)
        )
        (out_dir / f"client{session.index}_stats.json").write_text(
            json.dumps(session.stats, indent=1)
        )
        chunks = chunk_latencies(session.result)
        stats.append(
            {
                **session.stats,
                "_chunks": chunks,
                "_chunk_values": [latency for _, latency, _ in chunks],
            }
        )
    summary = summarize(stats, failed=len(failures))
    summary.update(
        {
            "config": {k: v for k, v in vars(config).items() if k != "headers"},
            "failures": failures,
            "per_client": [
                {
                    k: s[k]
                    for k in (
                        "client",
                        "first_token_latency_s",
                        "end_to_end_latency_s",
                        "rtf",
                        "is_real_time",
                        "finals",
                        "transcript",
                    )
                }
                for s in stats
            ],
        }
    )
    plot(stats, out_dir)
    summary["files"] = sorted([*(p.name for p in out_dir.iterdir()), "summary.json"])
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def plot(sessions: list[dict[str, Any]], out_dir: Path) -> list[str]:
    """latency_histogram.png and latency_over_time.png (one line per client)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [v * 1000 for s in sessions for v in s["_chunk_values"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(values or [0], bins=40, color="#2563eb")
    ax.set_xlabel("chunk latency (ms): message received - its audio sent")
    ax.set_ylabel("messages")
    ax.set_title(f"Latency histogram, {len(sessions)} sessions")
    fig.tight_layout()
    fig.savefig(out_dir / "latency_histogram.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for s in sessions:
        chunks = s["_chunks"]
        if chunks:
            ax.plot(
                [t for t, _, _ in chunks],
                [latency * 1000 for _, latency, _ in chunks],
                marker=".",
                linewidth=1,
                label=f"client {s['client']}",
            )
    ax.set_xlabel("time since the session's first frame (s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title("Latency over time per client")
    if sessions:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out_dir / "latency_over_time.png", dpi=100)
    plt.close(fig)
    return ["latency_histogram.png", "latency_over_time.png"]


def format_summary(summary: dict[str, Any]) -> str:
    """A few human lines: p50/p95 of first-token and end-to-end latency, RTF, real time."""

    def pair(key: str, scale: float = 1000.0, unit: str = "ms") -> str:
        d = summary[key]
        if d["median"] is None:
            return "n/a"
        return f"p50 {d['median'] * scale:.0f} {unit}, p95 {d['p95'] * scale:.0f} {unit}"

    rtf = summary["rtf"]
    lines = [
        f"sessions: {summary['completed']} completed, {summary['failed']} failed",
        f"first-token latency: {pair('first_token_latency_s')}",
        f"end-to-end latency:  {pair('end_to_end_latency_s')}",
        f"chunk latency:       {pair('chunk_latency_s')}",
        "RTF:                 "
        + (
            f"p50 {rtf['median']:.3f}, p95 {rtf['p95']:.3f}" if rtf["median"] is not None else "n/a"
        ),
        f"real time:           {summary['real_time_sessions']}/{summary['completed']}"
        f" sessions (all: {'yes' if summary['all_real_time'] else 'no'})",
    ]
    return "\n".join(lines)
