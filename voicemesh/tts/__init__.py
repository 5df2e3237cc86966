"""Text-to-speech engine code shared by ``tts_vits`` (and ``tts_clone``'s CPU fallback).

``sherpa_onnx`` and espeak-ng are imported only when an engine is built, so importing
this package is cheap; the gateway still never imports it.

The API, small on purpose::

    from voicemesh.tts import VitsSynthesizer, default_voice_files

    engine = VitsSynthesizer(default_voice_files())      # the bundled Piper voice (Joe)
    result = engine.synthesize("Hello there.", speaker_id=0, speed=1.0)
    result.audio          # float32 mono numpy array in [-1, 1]
    result.sample_rate    # 22050 for Joe
    result.synthesis_s, result.first_chunk_s, result.duration_s, result.rtf

    for chunk in engine.synthesize_chunks(text):         # streaming: first clause, sentences
        chunk.audio, chunk.text, chunk.index, chunk.synthesis_s

* :class:`Synthesizer` is the ``typing.Protocol`` every engine satisfies
  (``sample_rate``, ``num_speakers``, ``synthesize``, ``synthesize_chunks``).
* :func:`~voicemesh.tts.piper_runtime.load_synthesizer` picks the engine for a model:
  :class:`~voicemesh.tts.piper_runtime.PiperRuntimeSynthesizer` (Piper voices on
  onnxruntime) or :class:`SherpaSynthesizer`; both are
  :class:`~voicemesh.tts.engine.PooledSynthesizer`.
* :class:`VitsSynthesizer` (alias of :class:`SherpaSynthesizer`) loads any sherpa-onnx
  TTS model described by :class:`TtsModelFiles` (family ``piper``, ``vits``,
  ``kokoro``, ``matcha``). It is thread-safe: calls borrow one of ``pool_size``
  OfflineTts instances, so concurrent requests never share one and never mix audio;
  ``acquire_timeout_s`` turns a long wait into :class:`~voicemesh.errors.Busy`.
* Errors: ``BadRequest`` (empty text ``empty_text``, speed outside 0.25-4 ``bad_speed``,
  speaker id out of range ``bad_speaker``), ``ModelAssetError`` (files or packages
  missing).
* :func:`split_sentences`, :func:`split_for_streaming`, :func:`normalize_text`: the pure
  text helpers the engine uses.
"""

from voicemesh.tts.engine import SynthesisChunk, SynthesisResult, Synthesizer, TtsModelFiles
from voicemesh.tts.prepare import default_voice_files
from voicemesh.tts.sherpa import SherpaSynthesizer, VitsSynthesizer
from voicemesh.tts.text import normalize_text, split_for_streaming, split_sentences

__all__ = [
    "SherpaSynthesizer",
    "SynthesisChunk",
    "SynthesisResult",
    "Synthesizer",
    "TtsModelFiles",
    "VitsSynthesizer",
    "default_voice_files",
    "normalize_text",
    "split_for_streaming",
    "split_sentences",
]
