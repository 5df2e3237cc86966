"""Benchmark: the fault matrix as a table, from the fault tier's own runs.

Runs ``pytest -m faults tests/faults`` (two STT replicas, the detector, two TTS
replicas and two gateways behind nginx; four live sessions and a TTS loop per case; one
fault per case) with ``FAULT_MATRIX_REPORT`` set, and prints each case's row: sessions
affected, the longest gap from the fault to a session's next message, lost utterances
and repeated finals (target 0), and the TTS calls after the fault (served whole,
refused with a reason, cut).

Usage: ``python -m benchmarks.fault_matrix [--json OUT] [-k CASE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

COLUMNS = [
    ("case", "fault"),
    ("affected", "sessions affected"),
    ("gap_max_s", "longest gap (s)"),
    ("lost_utterances", "lost utterances"),
    ("repeated_finals", "repeated finals"),
    ("tts_ok", "TTS whole"),
    ("tts_refused", "TTS refused (503)"),
    ("tts_cut", "TTS cut"),
]


def table(rows: list[dict[str, object]]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = [str(row.get(key, "")) for key, _ in COLUMNS]
        cells[1] = f"{row.get('affected')} of {row.get('sessions')}"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("-k", dest="keyword", help="only the cases matching (pytest -k)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "rows.jsonl"
        command = [sys.executable, "-m", "pytest", "-m", "faults", "tests/faults", "-q"]
        if args.keyword:
            command += ["-k", args.keyword]
        env = {**os.environ, "FAULT_MATRIX_REPORT": str(report)}
        code = subprocess.run(command, env=env, check=False).returncode
        rows = (
            [json.loads(line) for line in report.read_text().splitlines()]
            if report.exists()
            else []
        )
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
