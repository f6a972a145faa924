"""The code type-checks: mypy on everything, strict on the broker's core logic (STYLE.md)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STRICT = ["shoal/jobs.py", "shoal/protocol.py", "shoal/messages.py", "shoal/faults.py", "broker/core",
          "broker/storage/batch.py", "broker/storage/contract.py", "broker/storage/memstore.py"]

pytestmark = pytest.mark.skipif(shutil.which("mypy") is None and not Path(sys.executable).with_name("mypy").exists(),
                                reason="mypy is not installed (pip install -e '.[test]')")


def _mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", "--ignore-missing-imports", "--no-error-summary", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.timeout(300)
def test_every_package_type_checks() -> None:
    result = _mypy("shoal", "broker", "worker", "client", "conf", "dashboard", "testing")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(300)
def test_the_broker_core_type_checks_strictly() -> None:
    result = _mypy("--strict", *STRICT)
    assert result.returncode == 0, result.stdout + result.stderr
