"""The openai-whisper engine on a tiny random-weight checkpoint this test builds itself.

The weights are random, so the text is noise; what is checked is the contract:
engine choice, result type, block duration, segment times and language.
"""

from __future__ import annotations

import dataclasses
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import whisper
from whisper.model import ModelDimensions, Whisper

from voicemesh.errors import BadRequest, UnknownModel
from voicemesh.protocol import SAMPLE_RATE, Segment
from voicemesh.stt.engines import guess_engine, load_transcriber
from voicemesh.stt.openai_engine import OpenAIWhisperTranscriber
from voicemesh.stt.types import Transcriber, TranscriptionResult

pytestmark = pytest.mark.unit

JFK = Path(__file__).resolve().parents[1] / "data" / "speech" / "whisper-jfk.wav"
BLOCK_S = 2.0
EPS = 1e-3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer, 64-wide multilingual Whisper with random weights, saved like a real .pt."""
    dims = ModelDimensions(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=64,
        n_audio_head=2,
        n_audio_layer=1,
        n_vocab=51865,
        n_text_ctx=448,
        n_text_state=64,
        n_text_head=2,
        n_text_layer=1,
    )
    torch.manual_seed(0)
    model = Whisper(dims)
    # openai-whisper leaves the text positional embedding as torch.empty (real checkpoints
    # overwrite it); uninitialised memory would make decoding NaN on some runs.
    with torch.no_grad():
        model.decoder.positional_embedding.normal_(std=0.02)
    path = tmp_path_factory.mktemp("openai-whisper") / "tiny-random.pt"
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def transcriber(checkpoint: Path) -> Transcriber:
    """The engine that ``load_transcriber`` builds for the checkpoint."""
    return load_transcriber(str(checkpoint))


@pytest.fixture(scope="module")
def short_engine(checkpoint: Path) -> OpenAIWhisperTranscriber:
    """The same checkpoint capped at 24 tokens per window, for the slower decoding paths."""
    return OpenAIWhisperTranscriber(str(checkpoint), sample_len=24)


@pytest.fixture(scope="module")
def block() -> np.ndarray:
    """The first two seconds of a real English clip, float32 at 16 kHz."""
    audio, rate = sf.read(JFK, dtype="float32")
    assert rate == SAMPLE_RATE
    return np.asarray(audio[: int(BLOCK_S * SAMPLE_RATE)])


def _check_times(result: TranscriptionResult) -> None:
    """Segment (and word) times lie inside the block and run forward."""
    previous_start = 0.0
    for seg in result.segments:
        assert isinstance(seg, Segment)
        assert 0.0 <= seg.start <= seg.end <= BLOCK_S + EPS
        assert seg.start >= previous_start
        previous_start = seg.start
        for word in seg.words or []:
            assert 0.0 <= word.start <= word.end <= BLOCK_S + EPS


def test_load_transcriber_picks_openai_whisper_for_a_checkpoint(
    transcriber: Transcriber, checkpoint: Path
) -> None:
    assert isinstance(transcriber, OpenAIWhisperTranscriber)
    assert isinstance(transcriber, Transcriber)
    assert transcriber.engine == "openai-whisper"
    assert transcriber.model_name == str(checkpoint)
    assert transcriber.device == "cpu"


def test_transcribe_block_contract(transcriber: Transcriber, block: np.ndarray) -> None:
    result = transcriber.transcribe(block, language="en")
    assert isinstance(result, TranscriptionResult)
    assert result.duration == pytest.approx(BLOCK_S, abs=1e-6)
    assert result.language == "en"
    assert isinstance(result.text, str)
    assert result.segments, "the random model still yields a segment for 2 s of audio"
    _check_times(result)
    assert 0.0 <= result.no_speech_prob <= 1.0


def test_transcribe_with_word_timestamps_keeps_times_in_block(
    short_engine: OpenAIWhisperTranscriber, block: np.ndarray
) -> None:
    result = short_engine.transcribe(block, language="en", word_timestamps=True)
    assert result.duration == pytest.approx(BLOCK_S, abs=1e-6)
    assert any(seg.words for seg in result.segments), "word timings were dropped"
    _check_times(result)


def test_prefix_starts_the_text_like_faster_whisper(
    short_engine: OpenAIWhisperTranscriber, block: np.ndarray
) -> None:
    result = short_engine.transcribe(block, language="en", prefix="hello world")
    assert result.text.startswith("hello world")
    assert result.segments[0].text.startswith("hello world")


def test_concurrent_calls_match_a_single_call(
    short_engine: OpenAIWhisperTranscriber, block: np.ndarray
) -> None:
    expected = short_engine.transcribe(block, language="en")
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: short_engine.transcribe(block, language="en"), range(2)))
    assert [r.text for r in results] == [expected.text, expected.text]
    assert [r.segments for r in results] == [expected.segments, expected.segments]


def test_guess_engine_from_the_model_reference(tmp_path: Path) -> None:
    assert guess_engine("base") == "faster-whisper"
    assert guess_engine("tiny.en") == "faster-whisper"
    assert guess_engine(str(tmp_path)) == "faster-whisper"
    assert guess_engine(str(tmp_path / "model.pt")) == "openai-whisper"
    assert guess_engine("base", "openai-whisper") == "openai-whisper"


def test_unknown_model_name_fails_without_a_download(tmp_path: Path) -> None:
    with pytest.raises(UnknownModel, match="not-a-whisper-model"):
        OpenAIWhisperTranscriber("not-a-whisper-model")
    with pytest.raises(UnknownModel):
        OpenAIWhisperTranscriber(str(tmp_path / "absent.pt"))
    assert "tiny" in whisper.available_models()


def test_missing_package_is_a_bad_request_with_a_pip_hint(
    monkeypatch: pytest.MonkeyPatch, checkpoint: Path
) -> None:
    # None in sys.modules makes ``import whisper`` fail as on a host without the package.
    monkeypatch.setitem(sys.modules, "whisper", None)
    with pytest.raises(BadRequest) as caught:
        OpenAIWhisperTranscriber(str(checkpoint))
    assert caught.value.code == "engine_not_installed"
    assert "pip install" in caught.value.message and "openai-whisper" in caught.value.message


def test_load_transcriber_resolves_bundled_names_for_faster_whisper(tmp_path: Path) -> None:
    from voicemesh.stt.faster_whisper_engine import FasterWhisperTranscriber

    engine = load_transcriber("tiny.en", models_dir=tmp_path)
    assert isinstance(engine, FasterWhisperTranscriber)
    assert engine.engine == "faster-whisper"
    assert engine.model_name == "tiny.en"
    audio, _ = sf.read(JFK, dtype="float32")
    result = engine.transcribe(np.asarray(audio), language="en")
    assert "fellow americans" in result.text.lower()
    assert not list(tmp_path.iterdir()), "tiny.en is used in place, nothing is copied"
