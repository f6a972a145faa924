"""One system's client process: ``python client.py MODULE PARAMS_JSON [PHASES]``.

Builds ``MODULE.Adapter`` (e.g. ``sys_celery``) with the servers ``run.py`` put in the
environment, runs every phase of ``workload.run_phases`` and prints one JSON line on
stdout: ``{"figures": {...}}``, or ``{"error": "..."}`` when the system could not be
imported (not installed), reached, or run. The worker process is the adapter's own.
"""
from __future__ import annotations

import importlib
import json
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

from workload import run_phases


def _interrupted(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    module_name, params = argv[0], json.loads(argv[1])
    phases = set(argv[2].split(",")) if len(argv) > 2 and argv[2] else None
    signal.signal(signal.SIGTERM, _interrupted)  # run.py stops us by pid: the worker goes too
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        print(json.dumps({"error": f"not installed: {exc} (run scripts/peers/setup.sh)"}), flush=True)
        return 1
    adapter = None
    try:
        adapter = module.Adapter()
        adapter.enqueue(-1)  # connect and warm up outside the clock; reset() empties it again
        figures = run_phases(adapter, params, phases)
    except Exception as exc:  # reported in the table, with the line it came from
        where = traceback.extract_tb(exc.__traceback__)[-1]
        origin = f"{Path(where.filename).name}:{where.lineno}"
        print(json.dumps({"error": f"{type(exc).__name__}: {exc} ({origin})"}), flush=True)
        traceback.print_exc()
        return 1
    finally:
        if adapter is not None:
            adapter.close()
    print(json.dumps({"figures": figures}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
