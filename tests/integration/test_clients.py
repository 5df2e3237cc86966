"""``voicemesh-client`` stream, mic and bench against the real mesh, PCM and Opus."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import websockets

from client.cli import main
from client.mic import Backoff, FileCaptureSource, MicStreamer, SlidingBuffer
from client.stats import DEFAULT_SLACK_S
from client.streaming import stream_audio
from tests.harness import (
    clip_named,
    dropping_proxy,
    error_rate,
    offline_transcript,
    stream_errors,
)
from voicemesh.audio import OpusStreamEncoder
from voicemesh.audio_files import load_clip_16k

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CLIP = clip_named("pocketsphinx-librivox-0870.wav")
SHORT = clip_named("pocketsphinx-librivox-0880.wav")
WER_MARGIN = 1.0  # the bound of test_stream_through_gateway


def assert_within_wer(clip: Any, transcript: str) -> None:
    """Streaming error rate no more than WER_MARGIN points above offline Whisper."""
    streamed = error_rate(clip.text, transcript)
    offline = error_rate(clip.text, offline_transcript(clip))
    assert streamed <= offline + WER_MARGIN, (transcript, streamed, offline)


@pytest.mark.parametrize("encoding", ["pcm", "opus"])
def test_stream_command_prints_transcript_and_latencies(
    mesh: Any, encoding: str, tmp_path: Path, capsys: Any
) -> None:
    stats_file = tmp_path / "stats.json"
    code = main(
        [
            "stream",
            str(CLIP.path),
            "--url",
            mesh.ws_url,
            "--language",
            "en",
            "--encoding",
            encoding,
            "--no-partials",
            "--json",
            str(stats_file),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "first token:" in out and "end of speech -> final:" in out
    stats = json.loads(stats_file.read_text())
    assert_within_wer(CLIP, stats["transcript"])
    # How fast the mesh answers is the benchmarks' business; here: the numbers are there
    # and mean what they say.
    assert stats["realtime_pacing"]
    assert stats["first_token_latency_s"] > 0
    assert stats["end_to_end_latency_s"] is not None
    assert stats["is_real_time"] == (stats["end_to_end_latency_s"] <= DEFAULT_SLACK_S)
    # Paced: the audio took its own length to send, and the last final came after that.
    assert stats["send_s"] >= 0.95 * stats["speech_s"], stats
    assert stats["chunk_latency_s"]["count"] >= stats["finals"] >= 1


def test_stream_command_fast_sends_without_pacing(mesh: Any, tmp_path: Path, capsys: Any) -> None:
    stats_file = tmp_path / "stats.json"
    assert (
        main(
            [
                "stream",
                str(CLIP.path),
                "--url",
                mesh.ws_url,
                "--language",
                "en",
                "--fast",
                "--json",
                str(stats_file),
            ]
        )
        == 0
    )
    stats = json.loads(stats_file.read_text())
    assert_within_wer(CLIP, stats["transcript"])
    assert not stats["realtime_pacing"]
    # Not paced: the audio went out in a fraction of its length (paced, it takes all of it).
    assert stats["send_s"] < 0.5 * stats["speech_s"], stats
    assert stats["is_real_time"] == (stats["rtf"] < 1.0)
    capsys.readouterr()


def test_stream_sample_needs_no_file(mesh: Any, capsys: Any) -> None:
    code = main(["stream", "--sample", "--url", mesh.ws_url, "--no-partials"])
    out = capsys.readouterr().out
    assert code == 0, out
    transcript = next(line for line in out.splitlines() if line.startswith("transcript: "))
    assert_within_wer(clip_named("whisper-jfk.wav"), transcript.removeprefix("transcript: "))


def test_stream_command_reports_unreachable_gateway(capsys: Any) -> None:
    from tests.harness import free_port

    code = main(["stream", str(SHORT.path), "--url", f"ws://127.0.0.1:{free_port()}/ws/x"])
    assert code == 1
    assert "cannot reach" in capsys.readouterr().err


async def test_opus_straight_to_the_stt_service(mesh: Any) -> None:
    url = mesh.stt_cpu.url.replace("http://", "ws://") + "/ws/transcribe"
    result = await stream_audio(url, load_clip_16k(CLIP.path), encoding="opus", language="en")
    assert not stream_errors(result), stream_errors(result)
    assert_within_wer(CLIP, result.transcript)


async def test_bad_opus_packet_gets_an_error_and_the_session_goes_on(mesh: Any) -> None:
    audio = load_clip_16k(SHORT.path)
    encoder = OpusStreamEncoder()
    packets = encoder.encode(np.concatenate([audio, np.zeros(24000, np.float32)]))
    packets += encoder.flush()
    async with websockets.connect(mesh.ws_url) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(json.dumps({"type": "start", "encoding": "opus", "language": "en"}))
        for index, packet in enumerate(packets):
            if index == 20:
                await ws.send(b"\xff\xfe this is not opus")
            await ws.send(packet)
            await asyncio.sleep(0.02)
        await ws.send(json.dumps({"type": "stop"}))
        messages = [json.loads(m) async for m in ws if isinstance(m, str)]
    errors = [m for m in messages if m["type"] == "error"]
    assert [e["code"] for e in errors] == ["bad_opus_packet"] and not errors[0]["fatal"]
    transcript = " ".join(m["text"] for m in messages if m["type"] == "final")
    assert_within_wer(SHORT, transcript)


def test_mic_lists_devices_and_explains_a_missing_microphone(capsys: Any) -> None:
    assert main(["mic", "--list-devices"]) == 0
    listed = capsys.readouterr().out
    assert "no input device found" in listed or " ch, " in listed


@pytest.mark.parametrize("encoding", ["pcm_s16le", "opus"])
async def test_mic_reconnects_after_a_drop_and_resumes_the_transcript(
    mesh: Any, encoding: str
) -> None:
    async with dropping_proxy(mesh.ws_url, drop_after_s=3.0) as (url, connections):
        streamer = MicStreamer(
            url,
            FileCaptureSource(str(CLIP.path)),
            encoding=encoding,
            language="en",
            backoff=Backoff(first_s=0.2, attempts=5),
        )
        report = await streamer.run()
    assert connections == ["dropped", "kept"]
    assert report.reconnects == 1 and report.resumed == 1
    # The server session went on: only audio after what the gateway held was sent again.
    assert all(s < 2.0 for s in report.replayed_s)
    assert len(report.result.of_type("ready")) == 2 and report.result.of_type("resumed")
    finals = report.result.of_type("final")
    assert [f["index"] for f in finals] == list(range(len(finals)))  # none lost or repeated
    assert_within_wer(CLIP, report.result.transcript)
    starts = [f["start"] for f in finals]
    assert starts == sorted(starts)
    assert finals[-1]["end"] > CLIP.duration_s - 1.5  # times continue across the reconnect


async def test_mic_gives_up_after_its_reconnect_attempts() -> None:
    from tests.harness import free_port

    streamer = MicStreamer(
        f"ws://127.0.0.1:{free_port()}/ws/transcribe",
        FileCaptureSource(str(SHORT.path)),
        backoff=Backoff(first_s=0.05, max_s=0.1, attempts=3),
    )
    with pytest.raises(ConnectionError, match="gave up after 3 reconnects"):
        await streamer.run()
    assert streamer.report.reconnects == 3


def test_mic_command_from_file(mesh: Any, capsys: Any) -> None:
    code = main(
        [
            "mic",
            "--from-file",
            str(SHORT.path),
            "--url",
            mesh.ws_url,
            "--language",
            "en",
            "--encoding",
            "opus",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    transcript = next(line for line in out.splitlines() if line.startswith("transcript: "))
    assert_within_wer(SHORT, transcript.removeprefix("transcript: "))
    assert "reconnects: 0" in out


def test_sliding_buffer_keeps_the_newest_audio() -> None:
    buffer = SlidingBuffer(max_s=1.0)
    for value in range(5):
        buffer.append(np.full(8000, value, np.float32))  # 0.5 s each
    assert (buffer.start, buffer.end) == (24000, 40000)
    first, audio = buffer.since(0)
    assert first == 24000 and audio[0] == 3 and audio[-1] == 4
    buffer.drop_before(36000)
    assert buffer.since(0)[0] == 36000 and buffer.since(0)[1].size == 4000


@pytest.mark.parametrize("encoding", ["opus"])
def test_bench_writes_results_stats_summary_and_plots(
    mesh: Any, tmp_path: Path, capsys: Any, encoding: str
) -> None:
    code = main(
        [
            "bench",
            "--clients",
            "3",
            "--file",
            str(SHORT.path),
            "--url",
            mesh.ws_url,
            "--language",
            "en",
            "--encoding",
            encoding,
            "--delay",
            "0.2",
            "--max-workers",
            "2",
            "--output",
            str(tmp_path),
            "--run",
            "t",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "first-token latency: p50" in out and "real time:" in out
    run = tmp_path / "t"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["completed"] == 3 and summary["failed"] == 0
    assert summary["config"]["encoding"] == encoding and summary["config"]["max_workers"] == 2
    for key in ("first_token_latency_s", "end_to_end_latency_s", "rtf", "chunk_latency_s"):
        assert summary[key]["count"] >= 3 and summary[key]["p95"] >= summary[key]["median"]
    assert summary["all_real_time"] == all(c["is_real_time"] for c in summary["per_client"])
    for client in range(3):
        stats = json.loads((run / f"client{client}_stats.json").read_text())
        assert_within_wer(SHORT, stats["transcript"])
        assert {"mean", "median", "p95", "p99"} <= set(stats["chunk_latency_s"])
        assert stats["jitter_s"] is None or stats["jitter_s"] >= 0
        result = json.loads((run / f"client{client}_result.json").read_text())
        sent_times = [s["t"] for s in result["sent"]]
        assert sent_times == sorted(sent_times) and result["received"][0]["type"] == "ready"
    for plot in ("latency_histogram.png", "latency_over_time.png"):
        assert (run / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
