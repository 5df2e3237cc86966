"""Piper voices on onnxruntime, the way Piper itself runs them, with sessions tuned here.

sherpa-onnx runs a Piper model about 17% slower than Piper's own onnxruntime session
(RTF 0.093 against 0.077 on two threads here) and exposes neither the graph
optimisation level nor the thread pool's spinning. This engine runs the same model
file on onnxruntime with every graph optimisation and the thread count the pool or the
solo instance asks for, and turns phonemes into model ids with ``piper-tts``'s own
:class:`~piper.PiperVoice` (the phonemes come from the espeak-ng bridge every Piper
voice here uses, see :func:`voicemesh.tts.engine.phonemize_piper`).

It needs Piper's voice config beside the model (``voice.json``, as ``voicemesh models
prepare`` writes it, or ``<model>.onnx.json``, as Piper ships it):
:func:`piper_config_path` finds it, and a Piper model without one runs on sherpa-onnx.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from voicemesh.errors import ModelAssetError
from voicemesh.tts.engine import PooledSynthesizer, TtsModelFiles


def piper_config_path(files: TtsModelFiles) -> Path | None:
    """Piper's JSON config of a Piper model, or None when there is none beside it."""
    if files.family != "piper":
        return None
    for path in (files.model.parent / "voice.json", Path(f"{files.model}.json")):
        if path.is_file():
            return path
    return None


class PiperRuntimeSynthesizer(PooledSynthesizer):
    """A Piper voice on onnxruntime (thread-safe, pooled like every engine here)."""

    runtime = "onnxruntime"

    def __init__(self, files: TtsModelFiles, *, spinning: bool = False, **options: Any) -> None:
        """``options``: those of :class:`PooledSynthesizer` (threads, pool, timeout)."""
        config_path = piper_config_path(files)
        if config_path is None:
            raise ModelAssetError(f"Piper model {files.model} has no voice config beside it")
        try:
            import onnxruntime  # noqa: F401 - a clear error now rather than at first use
            from piper.config import PiperConfig
        except ImportError as exc:
            raise ModelAssetError(
                "Piper voices on onnxruntime need the PyPI packages onnxruntime and piper-tts"
            ) from exc
        self.config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        self.spinning = spinning
        super().__init__(files, **options)

    def _open(self, threads: int) -> Any:
        import onnxruntime
        from piper import PiperVoice

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Threads that spin while waiting for work take CPU the other services on these
        # cores need (the STT engines in the embedded mesh); they only help when idle.
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if self.spinning else "0"
        )
        session = onnxruntime.InferenceSession(
            str(self.files.model), sess_options=options, providers=["CPUExecutionProvider"]
        )
        return PiperVoice(session=session, config=self.config)

    def _describe(self, instance: Any) -> tuple[int, int]:
        return int(self.config.sample_rate), max(1, int(self.config.num_speakers))

    def _speak(
        self,
        instance: Any,
        text: str,
        codepoints: list[list[int]] | None,
        speaker_id: int,
        speed: float,
    ) -> np.ndarray:
        from piper.config import SynthesisConfig

        if not codepoints:
            return np.zeros(0, dtype=np.float32)
        config = SynthesisConfig(
            speaker_id=speaker_id if self._num_speakers > 1 else None,
            length_scale=self.files.length_scale / speed,
            noise_scale=self.files.noise_scale,
            noise_w_scale=self.files.noise_scale_w,
        )
        parts = [
            np.asarray(
                instance.phoneme_ids_to_audio(
                    instance.phonemes_to_ids([chr(c) for c in sentence]), config
                ),
                dtype=np.float32,
            ).reshape(-1)
            for sentence in codepoints
            if sentence
        ]
        audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        return np.clip(audio, -1.0, 1.0)


PiperRuntime = Literal["onnxruntime", "sherpa-onnx"]


def load_synthesizer(
    files: TtsModelFiles, *, piper_runtime: PiperRuntime = "onnxruntime", **options: Any
) -> PooledSynthesizer:
    """The engine for ``files``: a Piper voice with its config on ``piper_runtime``,
    anything else on sherpa-onnx. ``options`` go to the engine (threads, pool, ...)."""
    from voicemesh.tts.sherpa import SherpaSynthesizer

    if piper_runtime == "onnxruntime" and piper_config_path(files) is not None:
        return PiperRuntimeSynthesizer(files, **options)
    return SherpaSynthesizer(files, **options)
