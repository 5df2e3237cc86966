"""``voicemesh-client``'s command line without a gateway: the packaged sample, bad usage,
and the benchmark's options under both their names."""

from __future__ import annotations

import filecmp
import subprocess
import sys

import pytest
import soundfile

from client.bench import BenchConfig
from client.cli import bench_config, build_parser, main, sample_clip
from tests.harness import REPO, SPEECH_DIR, free_port

pytestmark = pytest.mark.unit


def test_the_sample_clip_ships_inside_the_client_package() -> None:
    clip = sample_clip()
    assert clip.parent.parent.name == "client" and clip.parent.name == "samples"
    info = soundfile.info(clip)
    assert (info.samplerate, info.channels) == (16000, 1)
    assert 10.0 < info.duration < 12.0
    assert filecmp.cmp(clip, SPEECH_DIR / "whisper-jfk.wav", shallow=False)


@pytest.mark.parametrize("argv", [["stream"], ["stream", "some.wav", "--sample"]])
def test_stream_wants_a_file_or_the_sample(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert "give an audio FILE or --sample" in capsys.readouterr().err


def test_stream_sample_reads_the_packaged_clip(capsys: pytest.CaptureFixture[str]) -> None:
    # Nothing listens there: the clip was read (else exit 2), then the gateway was not found.
    code = main(["stream", "--sample", "--url", f"ws://127.0.0.1:{free_port()}/ws/transcribe"])
    assert code == 1
    assert "cannot reach" in capsys.readouterr().err


def bench_args(*argv: str) -> BenchConfig:
    return bench_config(build_parser().parse_args(["bench", *argv]))


def test_bench_takes_the_specifications_option_names() -> None:
    config = bench_args(
        "--num-clients",
        "7",
        "--delay-between-starts",
        "0.25",
        "--chunk-time",
        "0.1",
        "--no-real-time",
        "--source-wav-path",
        "speech.wav",
    )
    assert (config.clients, config.delay_s, config.chunk_ms, config.realtime) == (
        7,
        0.25,
        100.0,
        False,
    )
    args = build_parser().parse_args(["bench", "--source-wav-path", "speech.wav"])
    assert args.file == "speech.wav"


def test_bench_options_keep_their_own_names_and_defaults() -> None:
    config = bench_args("--clients", "3", "--delay", "1.5", "--chunk-ms", "20")
    assert (config.clients, config.delay_s, config.chunk_ms, config.realtime) == (
        3,
        1.5,
        20.0,
        True,
    )
    assert bench_args().chunk_ms == 40.0 and bench_args().realtime is True
    assert bench_args("--fast").realtime is False
    assert bench_args("--real-time").realtime is True


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--fast", "--real-time"], "contradict"),
        (["--chunk-time", "0.1", "--chunk-ms", "40"], "not both"),
        (["--num-clients", "0"], "clients at least 1"),
        (["--chunk-time", "0"], "chunk must be positive"),
    ],
)
def test_bench_refuses_contradicting_or_empty_options(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", *argv]) == 2
    assert complaint in capsys.readouterr().err


def test_bench_sends_the_internal_token_its_environment_has(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Straight to an engine, the client needs the mesh's token, as the gateway does.
    assert bench_args("--api-key", "k").headers == {"Authorization": "Bearer k"}
    assert bench_args().headers is None
    monkeypatch.setenv("VOICEMESH_INTERNAL_TOKEN", "a-mesh-internal-token-0123456789")
    assert bench_args("--api-key", "k").headers == {
        "Authorization": "Bearer k",
        "X-VoiceMesh-Internal-Token": "a-mesh-internal-token-0123456789",
    }


def test_the_client_loads_without_the_web_framework() -> None:
    # voicemesh[client] installs no FastAPI: nothing the client imports may need it.
    code = "import sys, client.cli; print(sorted({'fastapi', 'starlette'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
