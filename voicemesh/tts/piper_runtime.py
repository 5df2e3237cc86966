"""Piper voices on onnxruntime, the way Piper itself runs them, with sessions tuned here.

sherpa-onnx runs a Piper model about 17% slower than Piper's own onnxruntime session
(RTF 0.093 against 0.077 on two threads here) and exposes neither the graph
optimisation level nor the thread pool's spinning. This engine runs the same model
on onnxruntime with every graph optimisation and the thread count the pool or the
solo instance asks for, and turns phonemes into model ids with ``piper-tts``'s own
:class:`~piper.PiperVoice` (the phonemes come from the espeak-ng bridge every Piper
voice here uses, see :func:`voicemesh.tts.engine.phonemize_piper`).

The model runs in two parts (:func:`split_at_decoder`): the text encoder, duration
predictor and flow make the latent frames of a sentence, and the HiFi-GAN decoder
turns frames into samples (256 per frame). The decoder is convolutional, so a run of
frames decodes, with a little context on each side, to the very samples the whole
would give: streaming decodes the first sentence's first frames alone and sends
them, then the rest. First audio then waits for one encoder pass and a quarter of a
second of decoding instead of the whole sentence, the sentence keeps its own
intonation (no cut in the text), and the cost is the context decoded twice.

It needs Piper's voice config beside the model (``voice.json``, as ``voicemesh models
prepare`` writes it, or ``<model>.onnx.json``, as Piper ships it):
:func:`piper_config_path` finds it, and a Piper model without one runs on sherpa-onnx.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from voicemesh.errors import ModelAssetError
from voicemesh.tts.engine import PooledSynthesizer, TtsModelFiles, phonemize_piper
from voicemesh.tts.pool import PlaybackClock
from voicemesh.tts.text import split_for_streaming, split_sentences

_LOGGER = logging.getLogger(__name__)

FIRST_PART_FRAMES = 24
"""Latent frames of the first part a stream sends (24 x 256 samples: 0.28 s at 22.05 kHz),
long enough to play while the rest of the sentence decodes (40 times faster than real time)."""
DECODER_CONTEXT_FRAMES = 10
"""Frames decoded beyond each side of a part and dropped: the decoder's reach, so the
parts join into the samples the whole would give (to 1e-6 here; 8 frames: 1e-3)."""
WHOLE_FIRST_MAX_CHARS = 100
"""A first sentence up to this long is encoded whole before its first part is decoded
(about 60 ms here); a longer one is cut at a clause or phrase first
(:func:`~voicemesh.tts.text.split_for_streaming`), so its encoder pass stays short."""


def piper_config_path(files: TtsModelFiles) -> Path | None:
    """Piper's JSON config of a Piper model, or None when there is none beside it."""
    if files.family != "piper":
        return None
    for path in (files.model.parent / "voice.json", Path(f"{files.model}.json")):
        if path.is_file():
            return path
    return None


@dataclass(frozen=True)
class SplitModel:
    """A Piper model as two ONNX graphs: text to latent frames, and frames to samples."""

    front: bytes
    decoder: bytes
    latent: str
    """Name of the tensor between them (the decoder's input)."""
    decoder_inputs: tuple[str, ...]


def split_at_decoder(model_path: Path) -> SplitModel | None:
    """``model_path`` cut at its HiFi-GAN decoder's input, or None for a graph that does
    not name it as Piper's export does (``/dec/conv_pre/Conv``)."""
    import onnx
    from onnx.utils import Extractor

    model = onnx.load(str(model_path))
    conv = next((n for n in model.graph.node if n.name.endswith("dec/conv_pre/Conv")), None)
    if conv is None:
        return None
    inputs = [i.name for i in model.graph.input]
    latent = conv.input[0]
    # A multi-speaker decoder is conditioned on the speaker embedding too.
    decoder_inputs = (latent, *(name for name in inputs if name == "sid"))
    try:
        extractor = Extractor(model)
        front = extractor.extract_model(inputs, [latent])
        decoder = extractor.extract_model(list(decoder_inputs), [model.graph.output[0].name])
    except Exception as exc:  # any failure: the model runs whole
        _LOGGER.warning("could not split %s at its decoder (%s); it runs whole", model_path, exc)
        return None
    return SplitModel(
        front.SerializeToString(), decoder.SerializeToString(), latent, decoder_inputs
    )


@dataclass(frozen=True)
class _Instance:
    """One engine instance: the model whole (``decoder`` None) or in two sessions."""

    front: Any
    decoder: Any


class PiperRuntimeSynthesizer(PooledSynthesizer):
    """A Piper voice on onnxruntime (thread-safe, pooled like every engine here)."""

    runtime = "onnxruntime"

    def __init__(
        self,
        files: TtsModelFiles,
        *,
        spinning: bool = True,
        split_decoder: bool = True,
        decoder_int8: bool = False,
        **options: Any,
    ) -> None:
        """``spinning``: let a multi-thread instance's workers spin between the model's
        operators (see :meth:`_open`); ``split_decoder``: stream the first sentence's
        audio in two parts (see the module); ``options``: those of
        :class:`PooledSynthesizer` (threads, pool, timeout); ``decoder_int8``: run the
        decoder's convolutions in 8 bits (:mod:`voicemesh.tts.int8`; needs the split)."""
        config_path = piper_config_path(files)
        if config_path is None:
            raise ModelAssetError(f"Piper model {files.model} has no voice config beside it")
        try:
            import onnxruntime  # noqa: F401 - a clear error now rather than at first use
            from piper import PiperVoice
            from piper.config import PiperConfig
        except ImportError as exc:
            raise ModelAssetError(
                "Piper voices on onnxruntime need the PyPI packages onnxruntime and piper-tts"
            ) from exc
        self.config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        # Phoneme ids only: the voice object's own session is never used.
        self._ids = PiperVoice(session=None, config=self.config)
        self.spinning = spinning
        self.split = split_at_decoder(files.model) if split_decoder or decoder_int8 else None
        self.decoder_int8 = False
        if decoder_int8 and self.split is not None and files.espeak_voice:
            self.split = self._quantized(self.split, files.espeak_voice)
            self.decoder_int8 = True
        self.split_stream = split_decoder and self.split is not None
        super().__init__(files, **options)

    def _quantized(self, split: SplitModel, espeak_voice: str) -> SplitModel:
        """``split`` with its decoder in 8 bits, calibrated on this voice's own frames."""
        from voicemesh.tts.int8 import CALIBRATION_TEXTS, quantize_decoder

        front = self._session(split.front, 2)
        noiseless = np.array([0.0, 1.0, 0.0], dtype=np.float32)
        feeds = []
        for text in CALIBRATION_TEXTS:
            for sentence in phonemize_piper(text, espeak_voice):
                inputs = self._feeds(sentence, 0, noiseless)
                latent = front.run([split.latent], inputs)[0]
                feeds.append(
                    {split.latent: latent, **{n: inputs[n] for n in split.decoder_inputs[1:]}}
                )
        return dataclasses.replace(split, decoder=quantize_decoder(split.decoder, feeds))

    def _session(self, model: bytes | str, threads: int) -> Any:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The model is thousands of small operators (the duration predictor alone has
        # 1,455): workers that sleep between them wake too late, and a two-thread run is
        # 8% slower (RTF 0.045 against 0.041 here). They spin only inside a run, which
        # owns the cores anyway: force_spinning_stop parks them when the run returns, so
        # the STT engines that share these cores lose nothing between requests.
        spin = self.spinning and threads > 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        return onnxruntime.InferenceSession(
            model, sess_options=options, providers=["CPUExecutionProvider"]
        )

    def _open(self, threads: int) -> Any:
        if self.split is None:
            return _Instance(self._session(str(self.files.model), threads), None)
        return _Instance(
            self._session(self.split.front, threads), self._session(self.split.decoder, threads)
        )

    def _describe(self, instance: Any) -> tuple[int, int]:
        return int(self.config.sample_rate), max(1, int(self.config.num_speakers))

    def _scales(self, speed: float) -> np.ndarray:
        """The model's (noise, length, duration noise) scales at ``speed``."""
        files = self.files
        return np.array(
            [files.noise_scale, files.length_scale / speed, files.noise_scale_w], dtype=np.float32
        )

    def _feeds(
        self, sentence: list[int], speaker_id: int, scales: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The model's inputs for one sentence's phonemes (as Piper builds them)."""
        ids = np.array([self._ids.phonemes_to_ids([chr(c) for c in sentence])], dtype=np.int64)
        feeds: dict[str, np.ndarray] = {
            "input": ids,
            "input_lengths": np.array([ids.shape[1]], dtype=np.int64),
            "scales": scales,
        }
        if self.config.num_speakers > 1:
            feeds["sid"] = np.array([speaker_id], dtype=np.int64)
        return feeds

    def _latent(self, instance: _Instance, feeds: dict[str, np.ndarray]) -> np.ndarray:
        assert self.split is not None
        return np.asarray(instance.front.run([self.split.latent], feeds)[0])

    def _decode(self, instance: _Instance, frames: np.ndarray, feeds: dict[str, Any]) -> np.ndarray:
        """Samples of a run of latent frames."""
        assert self.split is not None
        inputs = {name: feeds[name] for name in self.split.decoder_inputs[1:]}
        inputs[self.split.latent] = np.ascontiguousarray(frames)
        return np.asarray(instance.decoder.run(None, inputs)[0], dtype=np.float32).reshape(-1)

    def _sentence(self, instance: _Instance, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if instance.decoder is None:
            return np.asarray(instance.front.run(None, feeds)[0], dtype=np.float32).reshape(-1)
        return self._decode(instance, self._latent(instance, feeds), feeds)

    def _speak(
        self,
        instance: Any,
        text: str,
        codepoints: list[list[int]] | None,
        speaker_id: int,
        speed: float,
    ) -> np.ndarray:
        parts = [
            self._sentence(instance, self._feeds(sentence, speaker_id, self._scales(speed)))
            for sentence in codepoints or []
            if sentence
        ]
        audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        return np.clip(audio, -1.0, 1.0)

    def _streaming_pieces(self, clean: str) -> list[str]:
        if not self.split_stream:
            return split_for_streaming(clean)
        sentences = split_sentences(clean)
        if sentences and len(sentences[0]) > WHOLE_FIRST_MAX_CHARS:
            return split_for_streaming(clean)
        return sentences

    def _parts(
        self, piece: str, speaker_id: int, speed: float, *, split: bool, clock: PlaybackClock
    ) -> Iterator[tuple[np.ndarray, bool]]:
        """The first sentence's first frames decoded alone, then the rest of the piece.

        The engine instance is given back between the two, so a client that reads the
        first part slowly holds no engine; the latent frames are plain arrays.
        """
        if not split or not self.split_stream:
            yield from super()._parts(piece, speaker_id, speed, split=False, clock=clock)
            return
        codepoints = phonemize_piper(piece, self.files.espeak_voice or "en-us")
        sentences = [s for s in codepoints if s]
        if not sentences:
            yield np.zeros(0, dtype=np.float32), True
            return
        scales = self._scales(speed)
        feeds = self._feeds(sentences[0], speaker_id, scales)
        head_end = FIRST_PART_FRAMES + DECODER_CONTEXT_FRAMES
        instance, solo = self._borrow(deadline=clock.deadline())
        try:
            frames = self._latent(instance, feeds)
            # Under 0.84 s of speech (3 parts' worth) the whole decodes in a few ms more.
            whole = frames.shape[2] <= 3 * FIRST_PART_FRAMES
            head = self._decode(instance, frames if whole else frames[:, :, :head_end], feeds)
        finally:
            self._give_back(instance, solo)
        hop = len(head) // (frames.shape[2] if whole else head_end)
        if whole and len(sentences) == 1:
            yield np.clip(head, -1.0, 1.0), True
            return
        yield np.clip(head if whole else head[: FIRST_PART_FRAMES * hop], -1.0, 1.0), False
        instance, solo = self._borrow(deadline=clock.deadline())
        try:
            rest = [
                self._sentence(instance, self._feeds(s, speaker_id, scales)) for s in sentences[1:]
            ]
            if not whole:
                tail = frames[:, :, FIRST_PART_FRAMES - DECODER_CONTEXT_FRAMES :]
                rest.insert(0, self._decode(instance, tail, feeds)[DECODER_CONTEXT_FRAMES * hop :])
        finally:
            self._give_back(instance, solo)
        yield np.clip(np.concatenate(rest), -1.0, 1.0), True


PiperRuntime = Literal["onnxruntime", "sherpa-onnx"]


def load_synthesizer(
    files: TtsModelFiles, *, piper_runtime: PiperRuntime = "onnxruntime", **options: Any
) -> PooledSynthesizer:
    """The engine for ``files``: a Piper voice with its config on ``piper_runtime``,
    anything else on sherpa-onnx. ``options`` go to the engine (threads, pool, ...;
    ``spinning``, ``split_decoder`` and ``decoder_int8`` only to the onnxruntime one)."""
    from voicemesh.tts.sherpa import SherpaSynthesizer

    if piper_runtime == "onnxruntime" and piper_config_path(files) is not None:
        return PiperRuntimeSynthesizer(files, **options)
    options.pop("spinning", None)
    options.pop("split_decoder", None)
    options.pop("decoder_int8", None)
    return SherpaSynthesizer(files, **options)
