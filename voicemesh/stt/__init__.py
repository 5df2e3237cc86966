"""Speech-to-text engine code shared by ``stt_cpu_ws``, ``stt_gpu_ws`` and ``stt_tiny_ws``.

Imported only by the engine services: it pulls in faster-whisper and onnxruntime.
"""
