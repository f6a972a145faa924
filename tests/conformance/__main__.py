"""``python -m tests.conformance --worker "CMD ..."``: run the scenarios against a worker.

The command is split like a shell would; the suite appends ``--group conf --connect ENDPOINT
--concurrency N`` and sets SHOAL_BROKER, SHOAL_GROUP, SHOAL_CONFIG, SHOAL_HEARTBEAT_INTERVAL and
SHOAL_GRACE (and with ``--curve`` SHOAL_KEY and SHOAL_BROKER_KEY). Prints one line per scenario and ``N passed, N failed``; exits 1 on any failure.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

from . import IMPLEMENTATIONS
from .harness import Harness, ScenarioFailed
from .scenarios import SCENARIOS, Scenario


def run_scenario(sc: Scenario, worker_cmd: list[str], tmp: Path, curve: bool = False) -> None:
    """Run one scenario in ``tmp`` with a fresh broker (with CURVE on if ``curve``); raises
    ``ScenarioFailed`` with the logs."""
    harness = Harness(tmp, worker_cmd, curve=curve, **sc.options)
    try:
        harness.start_broker()
        try:
            sc.run(harness)
        except Exception as exc:  # a client error (a wait that timed out) needs the logs as much
            raise ScenarioFailed(f"{sc.name}: {type(exc).__name__}: {exc}\n{harness.logs()}") from None
    finally:
        harness.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.conformance", description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--worker", help="the worker's command line (quoted), without --group/--connect/--concurrency")
    target.add_argument("--implementation", choices=sorted(IMPLEMENTATIONS), help="one that ships with Shoal")
    parser.add_argument("--only", action="append", help="run only this scenario (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep each scenario's directory (logs, data)")
    parser.add_argument("--curve", action="store_true",
                        help="the broker with CURVE on; the worker gets its key in SHOAL_KEY / SHOAL_BROKER_KEY")
    args = parser.parse_args(argv)
    cmd = shlex.split(args.worker) if args.worker else IMPLEMENTATIONS[args.implementation]
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    unknown = set(args.only or ()) - {s.name for s in SCENARIOS}
    if unknown:
        parser.error(f"no scenario {sorted(unknown)}; there are: {', '.join(s.name for s in SCENARIOS)}")
    passed = failed = 0
    for sc in chosen:
        tmp = Path(tempfile.mkdtemp(prefix=f"shoal-conf-{sc.name}-"))
        started = time.monotonic()
        try:
            run_scenario(sc, cmd, tmp, args.curve)
        except Exception as exc:  # one scenario's failure must not hide the others'
            failed += 1
            print(f"FAIL {sc.name} ({time.monotonic() - started:.1f}s): {exc}\n  logs in {tmp}", flush=True)
            continue
        passed += 1
        print(f"ok   {sc.name} ({time.monotonic() - started:.1f}s)", flush=True)
        if not args.keep:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
