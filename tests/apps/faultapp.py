"""Durable workflows for the fault-point tests (group "faults"). Side effects are counted in files."""
from __future__ import annotations

import os
from pathlib import Path

from shoal import workflow

HERE = Path(os.environ.get("SHOAL_TEST_DIR", "."))


def effect(name: str) -> str:
    """Appends this process's pid to ``effect-NAME``: one line per call."""
    with open(HERE / f"effect-{name}", "a") as fh:
        fh.write(f"{os.getpid()}\n")
    return name


@workflow("two-steps", worker="faults", retries=3)
def two_steps(payload, step):
    """Two durable steps, each with a side effect that must happen once."""
    tag = payload["tag"]
    first = step.run("first", effect, f"{tag}-first")
    second = step.run("second", effect, f"{tag}-second")
    return [first, second]
