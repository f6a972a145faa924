"""docs/protocol.md against the code, both ways: every command, every field of every typed
message body and every error code in the code is in the document, and every command and error
code the document's tables name exists. Read generically, so what is added later is required too."""
from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

from shoal import messages as M
from shoal import protocol as P

DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
QUOTED = set(re.findall(r"`([^`\n]+)`", DOC))


def _commands() -> dict[str, bytes]:
    return {name: value for name, value in vars(P).items()
            if isinstance(value, bytes) and value in P.KNOWN_COMMANDS and name == value.decode()}


def _error_codes() -> dict[str, str]:
    return {name: value for name, value in vars(P).items() if name.startswith("E_") and isinstance(value, str)}


def _message_classes() -> list[type]:
    return [cls for _, cls in inspect.getmembers(M, inspect.isclass)
            if dataclasses.is_dataclass(cls) and cls.__module__ == M.__name__]


def _table_first_cells(header: str) -> list[str]:
    """The backquoted names in the first column of every table whose header's first cell is ``header``."""
    names: list[str] = []
    in_table = False
    for line in DOC.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if not cells:
            in_table = False
        elif cells[0] == header:
            in_table = True
        elif in_table and not set(cells[0]) <= {"-", " ", ":"}:
            names.extend(re.findall(r"`([^`]+)`", cells[0]))
    return names


def test_the_code_has_commands_messages_and_codes_to_check() -> None:
    assert len(_commands()) >= 20 and len(_error_codes()) >= 10 and len(_message_classes()) >= 9


def test_every_command_in_the_code_is_documented() -> None:
    missing = sorted(name for name in _commands() if name not in QUOTED)
    assert missing == [], f"docs/protocol.md does not describe the commands {missing}"


def test_every_command_is_in_a_command_table_of_its_direction() -> None:
    tabled = set(_table_first_cells("Command"))
    missing = sorted(c.decode() for c in P.KNOWN_COMMANDS if c.decode() not in tabled)
    assert missing == [], f"commands with no row in a command table: {missing}"


def test_every_field_of_every_typed_message_is_documented() -> None:
    missing = sorted(f"{cls.__name__}.{f.name}" for cls in _message_classes() for f in dataclasses.fields(cls)
                     if f.name not in QUOTED and not re.search(rf"`[^`]*\b{f.name}\b[^`]*`", DOC))
    assert missing == [], f"docs/protocol.md does not name these message fields: {missing}"


def test_every_typed_message_class_is_named() -> None:
    missing = sorted(cls.__name__ for cls in _message_classes() if f"`{cls.__name__}`" not in DOC)
    assert missing == [], f"docs/protocol.md should say which body {missing} check"


def test_every_error_code_is_documented_and_every_documented_code_exists() -> None:
    codes = set(_error_codes().values())
    tabled = _table_first_cells("Code")
    assert sorted(codes - set(tabled)) == [], "error codes missing from the Errors table"
    assert sorted(set(tabled) - codes) == [], "the Errors table names codes the code does not have"


def test_every_command_the_tables_name_exists() -> None:
    known = {c.decode() for c in P.KNOWN_COMMANDS}
    unknown = sorted(set(_table_first_cells("Command")) - known)
    assert unknown == [], f"docs/protocol.md's command tables name commands that do not exist: {unknown}"


def test_the_documented_version_and_limits_are_the_codes() -> None:
    assert f"`{P.VERSION.decode()}`" in DOC
    assert f"{P.DEFAULT_MAX_MESSAGE_BYTES >> 20} MiB" in DOC and f"{P.SMALL_BODY_BYTES >> 10} KiB" in DOC
    assert f"1 to {M.MAX_NAME} characters" in DOC and f"{M.MAX_SLOTS:,}" in DOC
    small = {c.decode() for c in P.SMALL_BODY_COMMANDS}
    row = next(line for line in DOC.splitlines() if "64 KiB" in line and line.startswith("|"))
    first_cell = row.strip("|").split("|")[0]
    assert set(re.findall(r"`([A-Z]+)`", first_cell)) == small, "the small-body row should list exactly SMALL_BODY_COMMANDS"
