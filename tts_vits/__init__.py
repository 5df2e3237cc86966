"""VITS text-to-speech service (sherpa-onnx); see ``tts_vits.app``."""
