"""Streaming Whisper base on CPU (faster-whisper int8)."""
