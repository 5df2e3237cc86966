"""VoiceMesh clients: file streamer (and, later, the mic and benchmark clients)."""
