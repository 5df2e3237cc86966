"""``voicemesh-client``: stream a file to the gateway and print the transcript live."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from client.streaming import stream_audio

DEFAULT_URL = "ws://127.0.0.1:8080/ws/transcribe"


def _printer(show_partials: bool):  # type: ignore[no-untyped-def]
    def show(t: float, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "partial" and show_partials:
            print(f"\r\033[K… {message['text']}", end="", flush=True)
        elif kind == "final":
            print(f"\r\033[K[{message['start']:7.2f}-{message['end']:7.2f}] {message['text']}"
                  f"   ({message['latency_ms']:.0f} ms, {message['engine']}/{message['device']})",
                  flush=True)
        elif kind in ("error", "failover"):
            print(f"\r\033[K{kind}: {message}", file=sys.stderr, flush=True)
    return show


def cmd_stream(args: argparse.Namespace) -> int:
    """Stream one audio file (any format) as a microphone would, or as fast as possible."""
    from voicemesh.audio import read_audio_file
    from voicemesh.errors import VoiceMeshError

    try:
        audio, rate = read_audio_file(args.file)
    except (OSError, VoiceMeshError) as exc:
        print(f"voicemesh-client: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(stream_audio(
            args.url, audio, sample_rate=rate, frame_ms=args.frame_ms,
            realtime=not args.fast, language=args.language,
            on_message=_printer(not args.no_partials),
        ))
    except OSError as exc:
        print(f"voicemesh-client: cannot reach {args.url}: {exc} (is `voicemesh up` running?)",
              file=sys.stderr)
        return 1
    print(f"\ntranscript: {result.transcript}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``voicemesh-client``."""
    parser = argparse.ArgumentParser(prog="voicemesh-client", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    stream = sub.add_parser("stream", help="stream an audio file to /ws/transcribe")
    stream.add_argument("file", help="wav, flac, mp3, ogg, webm, ...")
    stream.add_argument("--url", default=DEFAULT_URL, help=f"gateway WebSocket ({DEFAULT_URL})")
    stream.add_argument("--language", help="language code, e.g. en (default: detect)")
    stream.add_argument("--frame-ms", type=float, default=40.0, help="audio per frame")
    stream.add_argument("--fast", action="store_true", help="send as fast as possible")
    stream.add_argument("--no-partials", action="store_true", help="print finals only")
    args = parser.parse_args(argv)
    return cmd_stream(args)


if __name__ == "__main__":
    sys.exit(main())
