"""The docs: they build with MkDocs in strict mode, and the reference pages are what the code says."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import docs_config  # noqa: E402
import gen_docs  # noqa: E402

from shoal.conf.checks import BROKER_KEYS, CRON_KEYS, GROUP_KEYS  # noqa: E402


def test_committed_reference_pages_are_what_the_code_makes() -> None:
    stale = gen_docs.stale_pages()
    assert not stale, f"{stale} differ from the code: run `python scripts/gen_docs.py` and commit the result"


def test_mkdocs_strict_build_passes(tmp_path: Path) -> None:
    try:
        import mkdocs  # noqa: F401
    except ImportError:
        pytest.fail("mkdocs is missing: pip install -e '.[test]'")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                            str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert built.returncode == 0, built.stdout + built.stderr
    assert (tmp_path / "site" / "reference" / "config" / "index.html").exists()


def test_every_page_under_docs_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = [p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")]
    assert pages and [p for p in pages if f" {p}" not in nav] == []


def test_config_reference_names_every_key_with_its_type_and_default() -> None:
    page = gen_docs.render_config()
    for key in [*BROKER_KEYS, *GROUP_KEYS, *CRON_KEYS]:
        assert f"| `{key}` |" in page, key
    assert '| `concurrency` | an integer >= 1 | `10` | `worker --concurrency` |' in page
    assert '| `bind` | a ZeroMQ endpoint like "tcp://127.0.0.1:5555" | `tcp://127.0.0.1:5555` | `SHOAL_BROKER`' in page
    for table in ("[workflows]", "[workflows.<group>]", "[servers.<name>.workflows]",
                  "[servers.<name>.workflows.<group>]", "[cron.<name>]", "[rates]", "[broker]"):
        assert f"`{table}`" in page, table


def test_config_reference_says_the_cron_seconds_field_is_the_last() -> None:
    assert "**sixth, last field is seconds**" in gen_docs.render_config()


def test_a_key_without_a_description_stops_the_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(GROUP_KEYS, "brand_new", GROUP_KEYS["workers"])
    with pytest.raises(SystemExit, match="brand_new"):
        gen_docs.render_config()


def test_a_description_of_a_removed_key_stops_the_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(docs_config.CRON_MEANING, "gone", "a key conf/ no longer has")
    with pytest.raises(SystemExit, match="gone"):
        gen_docs.render_config()


def test_cli_reference_lists_every_command_and_option() -> None:
    page = gen_docs.render_cli()
    for command, parser, _ in gen_docs.parsers():
        assert f"## `{command}`" in page
        for action in gen_docs.options(parser):
            name = action.option_strings[0] if action.option_strings else action.metavar or action.dest
            assert f"`{name}`" in page, (command, name)
    assert "## `shoal config`" in page and "`--show`" in page


def test_every_cli_option_has_help_text() -> None:
    missing = [f"{command} {action.option_strings or action.dest}"
               for command, parser, _ in gen_docs.parsers() for action in gen_docs.options(parser)
               if not action.help]
    assert missing == []


def test_every_shoal_command_has_a_summary() -> None:
    assert [command for command, _, summary in gen_docs.parsers() if not summary] == []


def test_metrics_reference_lists_what_the_broker_exports() -> None:
    from shoal.broker.shell.metrics import METRICS

    page = gen_docs.render_metrics()
    assert all(f"| `{name}` | {kind} | `group` |" in page for name, _, kind, _ in METRICS)
    assert "| `shoal_events_dropped_total` | counter | - |" in page


def test_readme_keeps_its_two_commands_for_a_fresh_machine() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python examples/demo.py" in readme
    assert "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest" in readme


def test_parser_capture_leaves_argparse_as_it_was() -> None:
    before = argparse.ArgumentParser.parse_args
    list(gen_docs.parsers())
    assert argparse.ArgumentParser.parse_args is before
