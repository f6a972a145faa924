"""The core's layout holds: no I/O library in it, and dependencies point one way
(command table -> handlers -> parts; no part imports a handler, the table or the broker)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from shoal import protocol as P
from shoal.broker.core.commands import COMMANDS, ROLE_OF

CORE = Path(__file__).resolve().parent.parent / "broker" / "core"
IO_LIBRARIES = {"zmq", "lmdb", "subprocess"}
SHELL = {"server", "supervisor", "store", "snapshots", "snapshot", "metrics", "lock", "cli", "history_reader",
         "replay", "replay_out", "rebuild", "verify", "history"}
ABOVE_PARTS = {"handlers", "commands", "broker"}


def _imports(path: Path) -> set[str]:
    """Every module a file imports, relative ones spelled from ``shoal.broker`` (``..x`` -> ``x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found.add(base)
            found.update(f"{base}.{alias.name}" if node.module else base + alias.name for alias in node.names)
    return found


def _parts() -> list[Path]:
    return [p for p in CORE.glob("*.py") if p.stem not in ABOVE_PARTS | {"__init__", "state"}]


def test_no_module_of_the_core_imports_an_io_library_or_the_shell() -> None:
    for path in CORE.rglob("*.py"):
        for name in _imports(path):
            top = name.lstrip(".").split(".")[0]
            assert top not in IO_LIBRARIES, f"{path.name} imports {name}"
            if name.startswith(".."):  # out of the core, into broker/
                assert name.lstrip(".").split(".")[0] not in SHELL, f"{path.name} imports the shell: {name}"


def test_no_part_imports_a_handler_the_command_table_or_the_broker() -> None:
    for path in _parts():
        for name in _imports(path):
            if name.startswith("."):
                assert name.lstrip(".").split(".")[0] not in ABOVE_PARTS, f"{path.name} imports {name}"


def test_handlers_import_neither_the_command_table_nor_the_broker() -> None:
    for path in (CORE / "handlers").glob("*.py"):
        for name in _imports(path):
            assert not name.startswith("..commands") and not name.startswith("..broker"), f"{path.name}: {name}"


def test_importing_the_core_loads_neither_zmq_nor_lmdb() -> None:
    code = "import sys, shoal.broker.core; print(sorted(m for m in ('zmq', 'lmdb') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_the_table_has_every_command_a_client_or_worker_sends_and_a_role_for_each() -> None:
    assert set(COMMANDS) == P.CLIENT_COMMANDS | P.WORKER_COMMANDS
    assert set(ROLE_OF) == set(COMMANDS)
