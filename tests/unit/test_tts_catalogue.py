"""The voice catalogue data file, installed state from files on disk, and audio encoding."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from voicemesh.audio_files import decode_audio_file
from voicemesh.errors import ModelAssetError, UnknownModel, VoiceMeshError
from voicemesh.tts.catalogue import CATALOGUE_FILE, VoiceCatalogue, read_catalogue
from voicemesh.tts.encoding import (
    AUDIO_FORMATS,
    LIMITER_CEILING,
    AudioEncoder,
    apply_volume,
    encode_audio,
    output_rate,
    wav_header,
)

pytestmark = pytest.mark.unit


def _install(models_dir: Path, folder: str, names: list[str]) -> None:
    for name in names:
        path = models_dir / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_shipped_catalogue_lists_every_model_family_and_expands_speakers(tmp_path: Path) -> None:
    catalogue = VoiceCatalogue.load(tmp_path)
    families = {m.family for m in catalogue.models.values()}
    assert families == {"piper", "vits", "kokoro", "matcha"}
    fanchen = catalogue.filter(model="vits-zh-hf-fanchen-C")
    assert len(fanchen) == 187
    assert {v.entry.speaker_id for v in fanchen} == set(range(187))
    assert len(catalogue.filter(model="vits-zh-aishell3")) == 174
    joe = catalogue.voice("en_US-joe-medium")
    assert joe.describe() | {"installed": None} == {
        "id": "en_US-joe-medium",
        "name": "Joe",
        "model": "piper-en_US-joe-medium",
        "speaker_id": 0,
        "language": "en-US",
        "gender": "male",
        "tags": ["neutral", "calm", "narration", "default"],
        "moods": ["neutral", "calm"],
        "speaker_ref": "piper-en_US-joe-medium:0",
        "family": "piper",
        "sample_rate": 22050,
        "installed": None,
    }
    # Nothing is in an empty models folder.
    assert catalogue.installed_models == set()
    assert catalogue.filter(installed=True) == []


def test_a_model_is_installed_exactly_when_all_its_files_are_there(tmp_path: Path) -> None:
    _install(tmp_path, "kokoro-en-v0_19", ["model.onnx", "tokens.txt"])
    assert "kokoro-en-v0_19" not in VoiceCatalogue.load(tmp_path).installed_models
    _install(tmp_path, "kokoro-en-v0_19", ["voices.bin"])
    catalogue = VoiceCatalogue.load(tmp_path)
    assert catalogue.installed_models == {"kokoro-en-v0_19"}
    assert catalogue.installed_voice("kokoro-bf_emma").entry.speaker_id == 7
    with pytest.raises(UnknownModel) as missing:
        catalogue.installed_voice("en_US-joe-medium")
    assert missing.value.code == "voice_not_installed"
    assert "model.onnx" in missing.value.message
    with pytest.raises(UnknownModel) as unknown:
        catalogue.voice("nobody")
    assert unknown.value.code == "unknown_voice"
    assert unknown.value.status_code == 404


def test_filters_combine_and_language_matches_by_prefix(tmp_path: Path) -> None:
    catalogue = VoiceCatalogue.load(tmp_path)
    british = catalogue.filter(language="en-GB")
    assert {v.id for v in british} == {
        "kokoro-bf_emma",
        "kokoro-bf_isabella",
        "kokoro-bm_george",
        "kokoro-bm_lewis",
    }
    english_men = catalogue.filter(language="en", gender="male")
    assert "en_US-joe-medium" in {v.id for v in english_men}
    assert all(v.entry.gender == "male" for v in english_men)
    assert {v.id for v in catalogue.filter(tag="DEEP")} == {"kokoro-am_adam", "kokoro-bm_george"}
    assert len(catalogue.filter(language="zh")) == 187 + 174


def test_a_broken_catalogue_file_is_a_clear_error(tmp_path: Path) -> None:
    data = json.loads(CATALOGUE_FILE.read_text(encoding="utf-8"))
    data["voices"].append({"id": "ghost", "name": "Ghost", "model": "nope", "language": "en"})
    bad = tmp_path / "voices.json"
    bad.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ModelAssetError, match="ghost"):
        read_catalogue(bad)
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelAssetError, match="unreadable"):
        read_catalogue(bad)


def _tone(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.mark.parametrize("fmt", AUDIO_FORMATS)
def test_every_format_decodes_whole_and_streamed(fmt: str) -> None:
    rate = output_rate(fmt, 22050)  # type: ignore[arg-type]
    audio = _tone(rate, 2.0)
    whole = encode_audio(audio, rate, fmt)  # type: ignore[arg-type]
    encoder = AudioEncoder(fmt, rate, streaming=True)  # type: ignore[arg-type]
    pieces = [encoder.feed(part) for part in np.array_split(audio, 4)] + [encoder.close()]
    streamed = b"".join(pieces)
    for data in (whole, streamed):
        if fmt == "pcm":
            decoded = np.frombuffer(data, "<i2").astype(np.float32) / 32768
            decoded_rate = rate
        else:
            decoded = decode_audio_file(data, target_rate=rate)
            decoded_rate = rate
        assert abs(len(decoded) / decoded_rate - 2.0) < 0.08, (fmt, len(decoded))
        assert 0.15 < float(np.abs(decoded).max()) < 0.4
    if fmt in ("wav", "flac"):
        info = soundfile.info(io.BytesIO(whole))
        assert (info.samplerate, info.channels) == (rate, 1)


def test_codec_rates_and_volume() -> None:
    assert output_rate("opus", 22050) == 24000
    assert output_rate("opus", 48000) == 48000
    assert output_rate("mp3", 22050) == 22050
    assert output_rate("mp3", 23000) == 24000
    assert output_rate("wav", 12345) == 12345
    loud = apply_volume(np.full(4, 0.25, dtype=np.float32), 6.0)
    assert np.allclose(loud, 0.25 * 10 ** (6 / 20))  # under the ceiling: plain gain
    assert apply_volume(np.full(2, 0.9, dtype=np.float32), 12.0).max() < 1.0
    assert wav_header(16000, 100)[40:44] == (100).to_bytes(4, "little")
    assert wav_header(16000, None)[40:44] == b"\xff\xff\xff\xff"


def test_the_limiter_makes_25_db_louder_without_a_sample_at_full_scale() -> None:
    rate = 22050
    t = np.arange(3 * rate) / rate
    # A 220 Hz tone swelling from silence to 0.5 and back: +25 dB takes its peak to 8.9.
    tone = (0.5 * np.sin(2 * np.pi * 220 * t) * np.abs(np.sin(np.pi * t / 3))).astype(np.float32)
    loud = apply_volume(tone, 25.0, rate)
    assert len(loud) == len(tone)
    assert float(np.abs(loud).max()) <= LIMITER_CEILING < 1.0
    pcm = np.frombuffer(encode_audio(loud, rate, "pcm"), "<i2")
    assert int(np.abs(pcm.astype(np.int32)).max()) < 32767
    # Clipping would flatten the tone's tops for many samples in a row; the limiter's
    # gain moves smoothly, so no run of samples sits at the ceiling.
    at_ceiling = np.abs(loud) >= LIMITER_CEILING - 1e-4
    assert at_ceiling.sum() < 0.002 * len(loud)
    rms = float(np.sqrt(np.mean(loud**2)) / np.sqrt(np.mean(tone**2)))
    assert rms > 2.0  # louder (about +8 dB: the quiet parts get the whole gain)
    quiet_part = slice(rate // 40, rate // 20)  # the swell's first notes, far under the ceiling
    expected = tone[quiet_part] * 10 ** (25 / 20)
    assert np.allclose(loud[quiet_part], expected, atol=1e-4)


def test_a_voice_is_found_by_id_by_speaker_index_or_by_model(tmp_path: Path) -> None:
    catalogue = VoiceCatalogue.load(tmp_path)
    default = "en_US-joe-medium"
    assert catalogue.resolve(77, "vits-zh-aishell3", default).id == "zh-aishell3-77"
    assert catalogue.resolve("77", "vits-zh-aishell3", default).id == "zh-aishell3-77"
    assert catalogue.resolve("vits-zh-aishell3:77", None, default).id == "zh-aishell3-77"
    assert catalogue.resolve(3, "kokoro-en-v0_19", default).id == "kokoro-af_sarah"
    assert catalogue.resolve(0, None, default).id == default  # the default voice's model
    assert catalogue.resolve(None, "vits-zh-hf-fanchen-C", default).id == "zh-fanchen-C-0"
    assert catalogue.resolve(None, None, default).id == default
    assert catalogue.resolve("kokoro-am_adam", "kokoro-en-v0_19", default).entry.speaker_id == 5
    voice = catalogue.resolve(77, "vits-zh-aishell3", default)
    assert voice.speaker_ref == "vits-zh-aishell3:77"
    assert catalogue.resolve(voice.speaker_ref, None, default) == voice


@pytest.mark.parametrize(
    ("voice_id", "model", "code", "named"),
    [
        (174, "vits-zh-aishell3", "unknown_voice", "0..173"),
        (1, None, "unknown_voice", "0..0"),
        ("nobody", None, "unknown_voice", "nobody"),
        (0, "no-such-model", "unknown_model", "kokoro-en-v0_19"),
        ("kokoro-en-v0_19:99", None, "unknown_voice", "0..10"),
        ("kokoro-af", "vits-zh-aishell3", "voice_model_mismatch", "kokoro-en-v0_19"),
        ("kokoro-en-v0_19:1", "vits-zh-aishell3", "voice_model_mismatch", "kokoro-en-v0_19"),
    ],
)
def test_a_voice_that_does_not_resolve_is_refused_saying_why(
    tmp_path: Path, voice_id: int | str, model: str | None, code: str, named: str
) -> None:
    catalogue = VoiceCatalogue.load(tmp_path)
    with pytest.raises(VoiceMeshError) as refused:
        catalogue.resolve(voice_id, model, "en_US-joe-medium")
    assert refused.value.code == code
    assert refused.value.status_code == (409 if code == "voice_model_mismatch" else 404)
    assert named in refused.value.message


def test_moods_are_catalogue_data_and_filter_the_voices(tmp_path: Path) -> None:
    catalogue = VoiceCatalogue.load(tmp_path)
    calm = {v.id for v in catalogue.filter(mood="calm")}
    assert calm == {"en_US-joe-medium", "kokoro-af_nicole", "kokoro-bf_emma"}
    assert {v.id for v in catalogue.filter(mood="Serious", gender="male")} == {
        "kokoro-am_adam",
        "kokoro-bm_george",
    }
    assert catalogue.voice("kokoro-bm_lewis").describe()["moods"] == ["energetic"]
    assert catalogue.voice("zh-aishell3-5").entry.moods == []
