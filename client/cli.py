"""``voicemesh-client``: stream a file or a microphone to the gateway, or benchmark it.

* ``stream FILE``: one file, real-time pace or ``--fast``; transcript and latencies
  (``stream --sample``: the short clip that ships with the client); a dropped connection
  is reconnected and the session resumed, as ``mic`` does;
* ``mic``: a microphone (or ``--from-file`` as a stand-in), live partials and finals,
  reconnecting with backoff and resuming the session; ``--list-devices`` shows the inputs;
* ``bench --clients N``: concurrent sessions, per-session and summary statistics,
  JSON files and PNG plots under ``outputs/bench/<run>/``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.resources
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicemesh.internal_token import internal_headers_from_environment
from voicemesh.protocol import SAMPLE_RATE

if TYPE_CHECKING:
    from client.bench import BenchConfig

DEFAULT_URL = "ws://127.0.0.1:8080/ws/transcribe"
SAMPLE_CLIP = "whisper-jfk.wav"
"""The clip in ``client/samples/``: JFK's "ask not" (1961, US public domain), 11 s."""
ENCODINGS = ("pcm", "pcm_s16le", "pcm_f32le", "opus")
DEFAULT_CHUNK_MS = 40.0


def _encoding(name: str) -> Any:
    return "pcm_s16le" if name == "pcm" else name


def _headers(args: argparse.Namespace) -> dict[str, str] | None:
    # Straight to an engine (its /ws/transcribe) needs the mesh's internal token: sent when
    # this environment has one (VOICEMESH_INTERNAL_TOKEN or its _FILE), as the gateway does.
    headers = internal_headers_from_environment()
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    return headers or None


def _printer(show_partials: bool) -> Callable[[float, dict[str, Any]], None]:
    def show(t: float, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "partial" and show_partials:
            print(f"\r\033[K… {message['text']}", end="", flush=True)
        elif kind == "final":
            print(
                f"\r\033[K[{message['start']:7.2f}-{message['end']:7.2f}] {message['text']}"
                f"   ({message['latency_ms']:.0f} ms, {message['engine']}/{message['device']})",
                flush=True,
            )
        elif kind in ("error", "failover", "reconnecting", "resumed"):
            print(f"\r\033[K{kind}: {message}", file=sys.stderr, flush=True)

    return show


def _print_latencies(stats: dict[str, Any]) -> None:
    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value * 1000:.0f} ms"

    chunk = stats["chunk_latency_s"]
    print(
        f"first token: {ms(stats['first_token_latency_s'])}, "
        f"end of speech -> final: {ms(stats['end_to_end_latency_s'])}, "
        f"chunk latency median {ms(chunk['median'])} p95 {ms(chunk['p95'])}, "
        f"RTF {stats['rtf']}, real time: {'yes' if stats['is_real_time'] else 'no'}"
    )


def sample_clip() -> Path:
    """The speech clip packaged with the client (``stream --sample``)."""
    return Path(str(importlib.resources.files("client") / "samples" / SAMPLE_CLIP))


def cmd_stream(args: argparse.Namespace) -> int:
    """Stream one audio file (any format) as a microphone would, or as fast as possible.

    The file goes through the same streamer as ``mic`` (a file stand-in for the
    microphone), so a dropped connection is reconnected and the session resumed."""
    from client.mic import Backoff, FileCaptureSource, MicStreamer
    from client.stats import session_stats
    from voicemesh.errors import VoiceMeshError

    if (args.file is None) == (not args.sample):
        print("voicemesh-client: give an audio FILE or --sample (not both)", file=sys.stderr)
        return 2
    if args.sample:
        args.file = str(sample_clip())
        if args.language is None:
            args.language = "en"
    try:
        source = FileCaptureSource(args.file, args.frame_ms, realtime=not args.fast)
    except (OSError, VoiceMeshError) as exc:
        print(f"voicemesh-client: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    streamer = MicStreamer(
        args.url,
        source,
        encoding=_encoding(args.encoding),
        language=args.language,
        # All of a file sent fast must still be there to send again after a drop.
        buffer_s=max(60.0, source.audio.size / SAMPLE_RATE + 5),
        headers=_headers(args),
        on_message=_printer(not args.no_partials),
        backoff=Backoff(first_s=0.5, max_s=4.0, attempts=args.reconnects),
    )
    try:
        report = asyncio.run(streamer.run())
    except ConnectionError as exc:
        print(
            f"voicemesh-client: cannot reach {args.url}: {exc} (is `voicemesh up` running?)",
            file=sys.stderr,
        )
        return 1
    result = report.result
    stats = session_stats(result, realtime=not args.fast)
    print(f"\ntranscript: {result.transcript}")
    if report.reconnects:
        print(f"reconnects: {report.reconnects} ({report.resumed} resumed)")
    _print_latencies(stats)
    if args.json:
        Path(args.json).write_text(json.dumps(stats, indent=1))
    return 0 if not result.of_type("error") else 3


def cmd_mic(args: argparse.Namespace) -> int:
    """Capture from a microphone (or a file stand-in) and print the transcript live."""
    from client.mic import (
        Backoff,
        CaptureSource,
        FileCaptureSource,
        MicStreamer,
        SoundDeviceSource,
        list_input_devices,
    )
    from client.stats import session_stats

    if args.list_devices:
        devices = list_input_devices()
        for device in devices:
            print(
                f"{device['index']:3d}  {device['name']}  ({device['channels']} ch, "
                f"{device['default_samplerate']:.0f} Hz)"
            )
        if not devices:
            print("no input device found (PortAudio sees no microphone)")
        return 0

    async def main() -> int:
        source: CaptureSource
        if args.from_file:
            source = FileCaptureSource(args.from_file, args.block_ms)
        else:
            import sounddevice

            try:
                source = SoundDeviceSource(args.device, args.block_ms)
            except (ValueError, OSError, sounddevice.PortAudioError) as exc:
                print(
                    f"voicemesh-client: no microphone: {exc} (see --list-devices, or "
                    "--from-file FILE)",
                    file=sys.stderr,
                )
                return 2
        streamer = MicStreamer(
            args.url,
            source,
            encoding=_encoding(args.encoding),
            language=args.language,
            buffer_s=args.buffer_s,
            headers=_headers(args),
            on_message=_printer(True),
            backoff=Backoff(args.backoff_s, args.backoff_max_s, args.reconnects),
        )
        try:
            report = await streamer.run()
        except ConnectionError as exc:
            print(f"voicemesh-client: {exc}", file=sys.stderr)
            return 1
        print(f"\ntranscript: {report.result.transcript}")
        print(
            f"reconnects: {report.reconnects} ({report.resumed} resumed), "
            f"replayed: {report.replayed_s} s"
        )
        _print_latencies(session_stats(report.result, realtime=True))
        return 0

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return 130


def bench_config(args: argparse.Namespace) -> BenchConfig:
    """The benchmark run the parsed ``bench`` options ask for (either spelling of each).

    ``--chunk-time`` is in seconds (the specification's), ``--chunk-ms`` in milliseconds;
    ``--no-real-time`` is ``--fast``. Contradicting options are a ValueError.
    """
    from client.bench import BenchConfig

    if args.fast and args.real_time:
        raise ValueError("--fast and --real-time contradict each other")
    if args.chunk_time is not None and args.chunk_ms is not None:
        raise ValueError("give --chunk-time (seconds) or --chunk-ms, not both")
    if args.chunk_time is not None:
        chunk_ms = args.chunk_time * 1000.0
    else:
        chunk_ms = args.chunk_ms if args.chunk_ms is not None else DEFAULT_CHUNK_MS
    if chunk_ms <= 0 or args.clients < 1 or args.delay < 0:
        raise ValueError("the chunk must be positive, clients at least 1, the delay not negative")
    realtime = not args.fast if args.real_time is None else args.real_time
    return BenchConfig(
        url=args.url,
        clients=args.clients,
        delay_s=args.delay,
        max_workers=args.max_workers,
        timeout_s=args.timeout,
        chunk_ms=chunk_ms,
        encoding=_encoding(args.encoding),
        realtime=realtime,
        language=args.language,
        slack_s=args.slack,
        headers=_headers(args),
    )


def cmd_bench(args: argparse.Namespace) -> int:
    """Run N concurrent sessions and write per-client results, a summary and plots."""
    from client.bench import format_summary, run_bench
    from voicemesh.audio_files import read_audio_file

    try:
        config = bench_config(args)
    except ValueError as exc:
        print(f"voicemesh-client bench: {exc}", file=sys.stderr)
        return 2
    audio, rate = read_audio_file(args.file or sample_clip())
    run = args.run or time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.output) / run
    summary = run_bench(config, audio, rate, out_dir, progress=not args.no_progress)
    print(format_summary(summary))
    print(f"files: {out_dir}/ ({', '.join(summary['files'])})")
    return 0 if summary["completed"] else 1


def build_parser() -> argparse.ArgumentParser:
    """The ``voicemesh-client`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="voicemesh-client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=DEFAULT_URL, help=f"gateway WebSocket ({DEFAULT_URL})")
        p.add_argument("--api-key", help="gateway API key (when auth is on)")
        p.add_argument("--language", help="language code, e.g. en (default: detect)")
        p.add_argument(
            "--encoding",
            choices=ENCODINGS,
            default="pcm",
            help="wire encoding: pcm (16-bit) or opus (20 ms packets)",
        )

    stream = sub.add_parser("stream", help="stream an audio file to /ws/transcribe")
    stream.add_argument("file", nargs="?", help="wav, flac, mp3, ogg, webm, ...")
    stream.add_argument(
        "--sample",
        action="store_true",
        help=f"stream the clip that ships with the client ({SAMPLE_CLIP}, "
        "English) instead of a file",
    )
    common(stream)
    stream.add_argument("--frame-ms", type=float, default=40.0, help="audio per frame")
    stream.add_argument("--fast", action="store_true", help="send as fast as possible")
    stream.add_argument(
        "--reconnects", type=int, default=3, help="reconnect attempts after a dropped connection"
    )
    stream.add_argument("--no-partials", action="store_true", help="print finals only")
    stream.add_argument("--json", help="also write the session's statistics to this file")
    stream.set_defaults(func=cmd_stream)

    mic = sub.add_parser("mic", help="stream a microphone live")
    common(mic)
    mic.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    mic.add_argument("--device", help="input device index or name (default: the system's)")
    mic.add_argument("--from-file", help="capture from this file instead, at real-time pace")
    mic.add_argument("--block-ms", type=float, default=40.0, help="audio per captured block")
    mic.add_argument(
        "--buffer-s",
        type=float,
        default=30.0,
        help="sliding buffer kept for replay after a reconnect",
    )
    mic.add_argument("--reconnects", type=int, default=8, help="reconnect attempts")
    mic.add_argument("--backoff-s", type=float, default=0.5, help="first reconnect delay")
    mic.add_argument("--backoff-max-s", type=float, default=8.0, help="longest reconnect delay")
    mic.set_defaults(func=cmd_mic)

    bench = sub.add_parser("bench", help="concurrent sessions and their latencies")
    common(bench)
    # Each option also answers to the specification's name (--num-clients, ...).
    bench.add_argument(
        "--file",
        "--source-wav-path",
        dest="file",
        help=f"audio each client streams (default: the packaged sample, {SAMPLE_CLIP})",
    )
    bench.add_argument(
        "--clients", "--num-clients", dest="clients", type=int, default=4, help="sessions"
    )
    bench.add_argument(
        "--delay",
        "--delay-between-starts",
        dest="delay",
        type=float,
        default=0.5,
        help="seconds between session starts",
    )
    bench.add_argument("--max-workers", type=int, help="sessions at once (default: all)")
    bench.add_argument("--timeout", type=float, default=120.0, help="per-session timeout, s")
    bench.add_argument(
        "--chunk-ms", type=float, help=f"audio per frame, ms (default {DEFAULT_CHUNK_MS:g})"
    )
    bench.add_argument("--chunk-time", type=float, help="audio per frame, seconds")
    bench.add_argument("--fast", action="store_true", help="not real time: as fast as possible")
    bench.add_argument(
        "--real-time",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="send at a microphone's pace (the default); --no-real-time is --fast",
    )
    bench.add_argument(
        "--slack",
        type=float,
        default=2.0,
        help="real time: last final at most this long after the last frame",
    )
    bench.add_argument("--output", default="outputs/bench", help="folder for the run folders")
    bench.add_argument("--run", help="run folder name (default: a timestamp)")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``voicemesh-client``."""
    args = build_parser().parse_args(argv)
    if getattr(args, "device", None) is not None and args.device.isdigit():
        args.device = int(args.device)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
