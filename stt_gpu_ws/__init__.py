"""Streaming Whisper base on CUDA (faster-whisper float16)."""
