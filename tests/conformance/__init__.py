"""The worker conformance suite: any worker implementation, given its command line, is run
against a real broker through the scenarios of docs/protocol.md ("Conformance").

Use it as ``python -m tests.conformance --worker "CMD ..."`` (from the repository root) or
through pytest (tests/test_conformance.py runs it for every implementation in IMPLEMENTATIONS).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
TS_SDK = ROOT / "sdk" / "typescript"

# The command line of each implementation that ships with Shoal. The suite appends
# `--group conf --connect ENDPOINT --concurrency N` and sets the environment it documents.
IMPLEMENTATIONS: dict[str, list[str]] = {
    "python": [sys.executable, "-m", "shoal.worker", "--app", "tests.conformance.app"],
    "typescript": ["node", str(TS_SDK / "dist" / "cli.js"), "--app", str(TS_SDK / "conformance" / "app.mjs")],
}
