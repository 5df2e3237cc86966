"""The speech detector ``stt_tiny_ws`` runs: Silero VAD per frame, Whisper tiny.en to confirm."""
