"""The speech detector: Silero VAD on every frame, Whisper tiny.en to confirm speech."""
