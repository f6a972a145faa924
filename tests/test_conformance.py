"""The conformance suite (tests/conformance) run against every worker implementation that ships
with Shoal: each scenario is one test, with a fresh broker and worker under tmp_path."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `tests.conformance` from any cwd

from tests.conformance import IMPLEMENTATIONS  # noqa: E402
from tests.conformance.__main__ import run_scenario  # noqa: E402
from tests.conformance.node import ensure_built  # noqa: E402
from tests.conformance.scenarios import SCENARIOS, Scenario  # noqa: E402


@pytest.fixture(scope="session")
def built_typescript() -> None:
    """The TypeScript package, installed and compiled (a missing node fails, never skips)."""
    ensure_built()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
def test_conformance(implementation: str, scenario: Scenario, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if implementation == "typescript":
        request.getfixturevalue("built_typescript")
    run_scenario(scenario, IMPLEMENTATIONS[implementation], tmp_path)


def test_every_scenario_is_named_in_the_protocol_document() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    missing = [s.name for s in SCENARIOS if f"`{s.name}`" not in doc]
    assert missing == [], f"docs/protocol.md's Conformance section should describe {missing}"
