"""The sherpa-onnx engine: any family (VITS, Piper, Kokoro, Matcha) on sherpa-onnx's OfflineTts.

``sherpa_onnx`` is imported only when an engine is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from voicemesh.errors import ModelAssetError
from voicemesh.tts.engine import PooledSynthesizer, TtsModelFiles


def _sherpa_config(files: TtsModelFiles, num_threads: int, provider: str) -> Any:
    """The sherpa-onnx OfflineTtsConfig for ``files``."""
    import sherpa_onnx

    def s(path: Path | None) -> str:
        return str(path) if path is not None else ""

    fsts = ",".join(str(p) for p in files.rule_fsts)
    model_kw: dict[str, Any] = {"num_threads": num_threads, "provider": provider, "debug": False}
    if files.family in ("piper", "vits"):
        model_kw["vits"] = sherpa_onnx.OfflineTtsVitsModelConfig(
            model=str(files.model),
            tokens=str(files.tokens),
            lexicon=s(files.lexicon),
            dict_dir=s(files.dict_dir),
            # espeak text is phonemised here; sherpa-onnx only maps code points to ids.
            data_dir="" if files.espeak_voice else s(files.data_dir),
            noise_scale=files.noise_scale,
            noise_scale_w=files.noise_scale_w,
            length_scale=files.length_scale,
        )
    elif files.family == "kokoro":
        model_kw["kokoro"] = sherpa_onnx.OfflineTtsKokoroModelConfig(
            model=str(files.model),
            voices=s(files.voices),
            tokens=str(files.tokens),
            data_dir=s(files.data_dir),
            lexicon=s(files.lexicon),
            length_scale=files.length_scale,
        )
    else:
        model_kw["matcha"] = sherpa_onnx.OfflineTtsMatchaModelConfig(
            acoustic_model=str(files.model),
            vocoder=s(files.vocoder),
            tokens=str(files.tokens),
            lexicon=s(files.lexicon),
            data_dir=s(files.data_dir),
            dict_dir=s(files.dict_dir),
            noise_scale=files.noise_scale,
            length_scale=files.length_scale,
        )
    return sherpa_onnx.OfflineTtsConfig(
        model=sherpa_onnx.OfflineTtsModelConfig(**model_kw),
        rule_fsts=fsts,
        max_num_sentences=1,
    )


class SherpaSynthesizer(PooledSynthesizer):
    """A model on sherpa-onnx's OfflineTts (every family: VITS, Piper, Kokoro, Matcha)."""

    runtime = "sherpa-onnx"

    def __init__(self, files: TtsModelFiles, *, provider: str = "cpu", **options: Any) -> None:
        """``options``: those of :class:`PooledSynthesizer` (threads, pool, timeout)."""
        try:
            import sherpa_onnx  # noqa: F401 - a clear error now rather than at first use
        except ImportError as exc:
            raise ModelAssetError(
                "text-to-speech needs the PyPI package sherpa-onnx; pip install sherpa-onnx"
            ) from exc
        self.provider = provider
        threads = int(options.get("num_threads", 2))
        if not files.missing() and not _sherpa_config(files, threads, provider).validate():
            raise ModelAssetError(f"sherpa-onnx rejected the config for {files.model}")
        super().__init__(files, **options)

    def _open(self, threads: int) -> Any:
        import sherpa_onnx

        return sherpa_onnx.OfflineTts(_sherpa_config(self.files, threads, self.provider))

    def _describe(self, instance: Any) -> tuple[int, int]:
        return int(instance.sample_rate), max(1, int(instance.num_speakers))

    def _speak(
        self,
        instance: Any,
        text: str,
        codepoints: list[list[int]] | None,
        speaker_id: int,
        speed: float,
    ) -> np.ndarray:
        import sherpa_onnx

        config = sherpa_onnx.GenerationConfig()
        config.sid = speaker_id
        config.speed = speed
        if codepoints is not None:
            config.phoneme_codepoints = codepoints
        return np.asarray(instance.generate(text, config).samples, dtype=np.float32)


VitsSynthesizer = SherpaSynthesizer
"""The name other code uses for the VITS engine (Piper voices are VITS)."""
