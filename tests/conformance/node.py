"""Building the TypeScript package for the tests: `npm ci` when node_modules is missing or older
than package-lock.json, `npm run build` when a source is newer than the last build. A missing
node or npm is an error that says so (the tests need them; .ci/run installs them)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from . import TS_SDK


class NodeMissing(RuntimeError):
    """node or npm is not installed."""


def _newest(paths: list[Path]) -> float:
    return max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)


def _run(args: list[str], what: str) -> None:
    done = subprocess.run(args, cwd=TS_SDK, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}` in {TS_SDK} failed ({what}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def tools() -> tuple[str, str]:
    """Paths of node and npm, or NodeMissing naming what to install."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise NodeMissing("the TypeScript worker's tests need node and npm on PATH (Debian: apt-get install nodejs "
                          "npm; .ci/run installs them)")
    return node, npm


def ensure_built() -> None:
    """Install the package's dependencies and compile it, each only when needed."""
    _, npm = tools()
    installed = TS_SDK / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < (TS_SDK / "package-lock.json").stat().st_mtime:
        _run([npm, "ci", "--no-audit", "--no-fund"], "installing the dependencies")
    sources = [*(TS_SDK / "src").rglob("*.ts"), TS_SDK / "tsconfig.json", TS_SDK / "package.json"]
    built = list((TS_SDK / "dist").rglob("*.js"))  # tsc writes every output on each build
    expected = {TS_SDK / "dist" / p.relative_to(TS_SDK / "src").with_suffix(".js") for p in (TS_SDK / "src").rglob("*.ts")}
    if not expected <= set(built) or min(p.stat().st_mtime for p in built) < _newest(sources):
        _run([npm, "run", "build"], "compiling the TypeScript")
