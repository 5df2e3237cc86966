"""Benchmark: how many real-time streams at once, and what the next one meets.

For each N of the sweep, N simulated users talk at once: each streams shared clips
one session after another at real-time pace (1 s between sessions, starts staggered
by 0.4-0.7 s), as a person at a microphone would. Two workloads:

* ``short``: commands and short sentences (clips under 6 s), five sessions per user;
* ``long``: continuous 7-12 s sentences, two sessions per user.

Per N it prints sessions served, refused (by the error code the client got before
any audio was accepted) and cut (a live session ended with an error or an abnormal
close), end of speech -> final latency p50/p95, speech start -> first partial
p50/p95, the WER of the served sessions, the per-message time of partials, and the
CPU each mesh service used. The largest N that holds the targets (final p95 <= 1.0 s,
first partial p95 <= 1.5 s, WER within 0.5 point of one stream, nothing refused or
cut) is printed at the end. ``--json`` and ``--plot`` write the results.

The mesh is the embedded one (``voicemesh up`` in a temporary home, one replica of
each service, the per-key session limit raised so it does not decide) unless
``--url`` names a running gateway; then CPU use is read from that mesh's state
file when ``--home`` is given.

Usage: ``python -m benchmarks.capacity --sessions 1,4,8,12 --workload long``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import websockets

from benchmarks import add_clips_option
from benchmarks.stt_stream import EmbeddedMesh, speech_spans
from client.streaming import stream_audio
from tests.harness import Clip, error_rate, load_manifest
from voicemesh.audio_files import load_clip_16k

TARGET_FINAL_P95_S = 1.0
TARGET_PARTIAL_P95_S = 1.5
TARGET_WER_POINTS = 0.5
GAP_S = 1.0
SESSIONS_PER_USER = {"short": 5, "long": 2}


@dataclass
class Prepared:
    """A clip loaded once: its audio, its speech spans, its reference."""

    clip: Clip
    audio: np.ndarray
    spans: list[tuple[float, float]]


@dataclass
class Outcome:
    """What one session met."""

    clip: str
    status: str  # served | refused | cut
    code: str | None = None
    final_lat: list[float] = field(default_factory=list)
    after_audio: float | None = None
    first_partial: float | None = None
    wer: float | None = None
    message: str | None = None


def workload_clips(prepared: list[Prepared], workload: str) -> list[Prepared]:
    """English clips of the workload's length."""
    english = [p for p in prepared if p.clip.language == "en"]
    if workload == "short":
        return [p for p in english if p.clip.duration_s < 6.0]
    return [p for p in english if 7.0 <= p.clip.duration_s <= 12.0]


async def one_session(url: str, item: Prepared, headers: dict[str, str]) -> Outcome:
    """Stream one clip at real-time pace; classify how it ended."""
    seen: list[dict[str, Any]] = []
    error: str | None = None
    try:
        result = await stream_audio(
            url,
            item.audio,
            language="en",
            frame_ms=40,
            timeout_s=90.0,
            extra_headers=headers,
            on_message=lambda _t, message: seen.append(message),
        )
    except websockets.ConnectionClosed as exc:
        error = f"close_{exc.rcvd.code if exc.rcvd else '?'}"
    except (OSError, TimeoutError) as exc:
        error = type(exc).__name__
    if seen and seen[0].get("type") == "error":
        return Outcome(
            item.clip.file, "refused", code=seen[0].get("code"), message=seen[0].get("message")
        )
    fatal = [m for m in seen if m.get("type") == "error" and m.get("fatal")]
    if fatal:
        return Outcome(
            item.clip.file, "cut", code=fatal[0].get("code"), message=fatal[0].get("message")
        )
    if error is not None:
        return Outcome(item.clip.file, "cut", code=error, message=error)
    ends = [e for _, e in item.spans]
    lat = []
    for received, final in result.timed("final"):
        before = [e for e in ends if e <= final["end"] + 0.05]
        if before:
            lat.append(received - max(before))
    partials = result.timed("partial")
    first_partial = partials[0][0] - item.spans[0][0] if partials and item.spans else None
    finals = result.timed("final")
    return Outcome(
        item.clip.file,
        "served",
        final_lat=lat,
        after_audio=finals[-1][0] - item.audio.size / 16000 if finals else None,
        first_partial=first_partial,
        wer=error_rate(item.clip.text, result.transcript),
    )


async def user(
    url: str, items: list[Prepared], delay: float, headers: dict[str, str]
) -> list[Outcome]:
    """One person: sessions one after another with a gap between them."""
    await asyncio.sleep(delay)
    outcomes = []
    for item in items:
        outcomes.append(await one_session(url, item, headers))
        await asyncio.sleep(GAP_S)
    return outcomes


def mesh_processes(home: Path | None) -> dict[str, Any]:
    """psutil handles of the mesh's services, by label (empty when unknown)."""
    if home is None:
        return {}
    import psutil

    try:
        state = json.loads((home / "run" / "state.json").read_text())
    except (OSError, ValueError):
        return {}
    procs = {}
    for entry in state.get("services", []):
        if entry.get("pid"):
            try:
                proc = psutil.Process(entry["pid"])
                proc.cpu_times()
                procs[Path(entry["log"]).stem] = proc
            except psutil.Error:
                continue
    return procs


def stt_health_urls(home: Path | None) -> list[str]:
    """``/health`` of every STT replica of the mesh (empty when unknown)."""
    if home is None:
        return []
    try:
        state = json.loads((home / "run" / "state.json").read_text())
    except (OSError, ValueError):
        return []
    return [
        f"{e['url'].rstrip('/')}/health"
        for e in state.get("services", [])
        if e.get("name", "").startswith("stt_") and e.get("name") != "stt_tiny_ws"
    ]


def decode_seconds(urls: list[str]) -> dict[str, float]:
    """Worker-seconds the STT replicas spent on finals and on partials so far."""
    import httpx

    total: dict[str, float] = {}
    for url in urls:
        try:
            busy = httpx.get(url, timeout=5).json().get("load", {}).get("busy_s", {})
        except (httpx.HTTPError, ValueError):
            continue
        for kind, seconds in busy.items():
            total[kind] = total.get(kind, 0.0) + float(seconds)
    return total


def cpu_seconds(procs: dict[str, Any]) -> dict[str, float]:
    """User + system CPU seconds of each process and its children so far."""
    import psutil

    out = {}
    for name, proc in procs.items():
        try:
            times = proc.cpu_times()
            out[name] = times.user + times.system
        except psutil.Error:
            out[name] = float("nan")
    return out


def pct(values: list[float], q: float) -> float | None:
    """Percentile in seconds, None for no values."""
    return round(float(np.percentile(values, q)), 3) if values else None


async def sweep_point(
    url: str, clips: list[Prepared], n: int, workload: str, *, headers: dict[str, str], seed: int
) -> list[Outcome]:
    """N users at once; each gets its own rotation of the clips."""
    rng = random.Random(seed + n)
    per_user = SESSIONS_PER_USER[workload]
    users = []
    delay = 0.0
    for i in range(n):
        items = [clips[(i + k) % len(clips)] for k in range(per_user)]
        users.append(user(url, items, delay, headers))
        delay += rng.uniform(0.4, 0.7)
    results = await asyncio.gather(*users)
    return [o for batch in results for o in batch]


def summarize(
    n: int, outcomes: list[Outcome], cpu: dict[str, float], wall_s: float
) -> dict[str, Any]:
    """One row of the table."""
    served = [o for o in outcomes if o.status == "served"]
    finals = [x for o in served for x in o.final_lat]
    after_audio = [o.after_audio for o in served if o.after_audio is not None]
    partials = [o.first_partial for o in served if o.first_partial is not None]
    wers = [o.wer for o in served if o.wer is not None]
    return {
        "sessions_at_once": n,
        "sessions": len(outcomes),
        "served": len(served),
        "refused": dict(Counter(o.code or "?" for o in outcomes if o.status == "refused")),
        "cut": dict(Counter(o.code or "?" for o in outcomes if o.status == "cut")),
        "cut_messages": sorted({o.message or "" for o in outcomes if o.status == "cut"})[:3],
        "refused_messages": sorted({o.message or "" for o in outcomes if o.status == "refused"})[
            :3
        ],
        "final_p50_s": pct(finals, 50),
        "final_p95_s": pct(finals, 95),
        "after_audio_p50_s": pct(after_audio, 50),
        "after_audio_p95_s": pct(after_audio, 95),
        "first_partial_p50_s": pct(partials, 50),
        "first_partial_p95_s": pct(partials, 95),
        "wer": round(float(np.mean(wers)), 2) if wers else None,
        "cpu_percent": {k: round(100 * v / wall_s, 1) for k, v in cpu.items()},
        "wall_s": round(wall_s, 1),
    }


def holds(row: dict[str, Any], single_wer: float | None) -> bool:
    """Whether a row meets every capacity target."""
    if row["refused"] or row["cut"] or row["final_p95_s"] is None:
        return False
    if row["final_p95_s"] > TARGET_FINAL_P95_S:
        return False
    if row["first_partial_p95_s"] is None or row["first_partial_p95_s"] > TARGET_PARTIAL_P95_S:
        return False
    if single_wer is not None and row["wer"] is not None:
        return bool(row["wer"] <= single_wer + TARGET_WER_POINTS)
    return True


def print_row(workload: str, row: dict[str, Any]) -> None:
    """One line of the table."""

    def s(value: float | None) -> str:
        return f"{value:5.2f}" if value is not None else "    -"

    refused = sum(row["refused"].values())
    cut = sum(row["cut"].values())
    cpu = " ".join(f"{k}={v:.0f}%" for k, v in sorted(row["cpu_percent"].items()) if v >= 1)
    after = f"{s(row['after_audio_p50_s'])} / {s(row['after_audio_p95_s'])}"
    wer = f"{row['wer']:5.1f}%" if row["wer"] is not None else "     -"
    print(
        f"{workload:5s} {row['sessions_at_once']:4d} {row['served']:3d}/{row['sessions']:<3d} "
        f"{refused:4d} {cut:4d}   {s(row['final_p50_s'])} / {s(row['final_p95_s'])}   {after}   "
        f"{s(row['first_partial_p50_s'])} / {s(row['first_partial_p95_s'])}  {wer}  {cpu}",
        flush=True,
    )


def plot(rows: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Latency and refusals against N, one colour per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for workload, series in rows.items():
        ns = [r["sessions_at_once"] for r in series]
        for key, style in (("final_p95_s", "-"), ("first_partial_p95_s", ":")):
            ys = [r[key] if r[key] is not None else np.nan for r in series]
            ax1.plot(ns, ys, style, marker="o", label=f"{workload} {key[:-2]}")
        lost = [sum(r["refused"].values()) + sum(r["cut"].values()) for r in series]
        ax2.plot(ns, lost, marker="o", label=f"{workload} refused + cut")
    ax1.axhline(TARGET_FINAL_P95_S, color="grey", linewidth=0.8)
    ax1.set_ylabel("seconds")
    ax1.legend(fontsize=8)
    ax2.set_ylabel("sessions")
    ax2.set_xlabel("sessions at once")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


class CapacityMesh(EmbeddedMesh):
    """The embedded mesh with the per-key session limit out of the way, plus ``env``."""

    def __init__(self, port: int, env: dict[str, str]) -> None:
        super().__init__(env.get("VOICEMESH_STT_CPU_MODEL", "base"), port)
        self.env.update(
            {
                "VOICEMESH_GATEWAY_MAX_SESSIONS_PER_KEY": "256",
                "VOICEMESH_GATEWAY_MAX_SESSIONS_TOTAL": "256",
                **env,
            }
        )


def run_sweep(
    url: str,
    home: Path | None,
    prepared: list[Prepared],
    args: argparse.Namespace,
) -> dict[str, list[dict[str, Any]]]:
    """Every workload at every N; prints rows as they come."""
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    rows: dict[str, list[dict[str, Any]]] = {}
    print(
        "load    N  served  ref  cut   final p50/p95 s  after audio p50/p95  "
        "1st partial p50/p95 s   WER  CPU",
        flush=True,
    )
    for workload in args.workload.split(","):
        clips = workload_clips(prepared, workload)
        rows[workload] = []
        for n in (int(x) for x in args.sessions.split(",")):
            procs = mesh_processes(home)
            health = stt_health_urls(home)
            before = cpu_seconds(procs)
            decode_before = decode_seconds(health)
            started = time.perf_counter()
            outcomes = asyncio.run(
                sweep_point(url, clips, n, workload, headers=headers, seed=args.seed)
            )
            wall = time.perf_counter() - started
            after = cpu_seconds(procs)
            used = {k: after[k] - before[k] for k in after}
            decode_after = decode_seconds(health)
            row = summarize(n, outcomes, used, wall)
            row["decode_percent"] = {
                k: round(100 * (v - decode_before.get(k, 0.0)) / wall, 1)
                for k, v in decode_after.items()
            }
            rows[workload].append(row)
            print_row(workload, row)
            if row["decode_percent"]:
                print(f"       decoding (% of one core): {row['decode_percent']}", flush=True)
            for kind in ("cut", "refused"):
                for message in row[f"{kind}_messages"]:
                    print(f"       {kind}: {message[:300]}", flush=True)
            time.sleep(args.pause)
    return rows


def report(rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The largest N that holds the targets, per workload (against the N=1 WER)."""
    best = {}
    for workload, series in rows.items():
        single = next((r["wer"] for r in series if r["sessions_at_once"] == 1), None)
        ok = [r["sessions_at_once"] for r in series if holds(r, single)]
        best[workload] = max(ok) if ok else 0
        print(
            f"{workload}: largest N holding final p95 <= {TARGET_FINAL_P95_S} s, first partial "
            f"p95 <= {TARGET_PARTIAL_P95_S} s, WER within {TARGET_WER_POINTS} point of one "
            f"stream, nothing refused or cut: {best[workload]}",
            flush=True,
        )
    return best


def main() -> int:
    """Run the sweep and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="1,2,4,8,12,16", help="comma-separated N")
    parser.add_argument("--workload", default="short,long", help="short, long or both")
    parser.add_argument("--url", help="a running gateway's /ws/transcribe instead of starting one")
    parser.add_argument("--home", type=Path, help="VOICEMESH_HOME of the running mesh (CPU use)")
    parser.add_argument("--key", help="API key to send")
    parser.add_argument("--port", type=int, default=18090)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--pause", type=float, default=3.0, help="seconds between points")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="mesh setting"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--plot", type=Path, help="write a PNG plot here")
    add_clips_option(parser)
    args = parser.parse_args()
    prepared = []
    for clip in load_manifest(args.clips):
        audio = load_clip_16k(clip.path)
        prepared.append(Prepared(clip, audio, speech_spans(audio)))
    if args.url:
        rows = run_sweep(args.url, args.home, prepared, args)
    else:
        env = dict(item.split("=", 1) for item in args.env)
        mesh = CapacityMesh(args.port, env)
        with mesh as url:
            rows = run_sweep(url, Path(mesh.home), prepared, args)
    best = report(rows)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "largest_n": best}, indent=2))
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
