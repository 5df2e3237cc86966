"""Benchmarks: ``python -m benchmarks.<name>`` from the repository root (``--help`` for each)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tests.harness import SPEECH_DIR


def add_clips_option(parser: argparse.ArgumentParser) -> None:
    """``--clips DIR``: a folder with a ``manifest.jsonl`` and its WAV files."""
    parser.add_argument(
        "--clips",
        type=Path,
        default=SPEECH_DIR,
        metavar="DIR",
        help="folder of speech clips with their manifest.jsonl (default: tests/data/speech)",
    )
