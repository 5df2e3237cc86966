"""``voicemesh-client``'s command line without a gateway: the packaged sample, bad usage."""

from __future__ import annotations

import filecmp

import pytest
import soundfile

from client.cli import main, sample_clip
from tests.harness import SPEECH_DIR, free_port

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
