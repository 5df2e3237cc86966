"""Zero-shot voice cloning: reference checks, voice profiles, engines, result cache."""
