"""The zero-shot voice cloning service (see ``voicemesh.clone``)."""
