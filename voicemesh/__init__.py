"""VoiceMesh shared package: protocol, settings, audio, registry, metrics, models, CLI.

Heavy engine code lives in :mod:`voicemesh.stt` and is imported lazily so that the
gateway never loads a model library.
"""

__version__ = "0.1.0"
