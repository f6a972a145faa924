"""The undo journal: how a message whose handler raised is taken back.

Every component that changes memory during ``handle`` appends the inverse of that change
(a function and its arguments) to one shared list. When the handler returns, the list is
cleared; when it raises, the inverses run newest first, so memory is as it was before the
message (the pass's batch, outbox and events are cut back to their marks; see ``Effects``).
Appending a tuple costs less than staging every change and applying it on success would,
and the hot path pays nothing else.
"""
from __future__ import annotations

from typing import Any, Callable

Undo = list[tuple[Any, ...]]  # (inverse function, *its arguments)

MISSING: Any = object()  # "there was no such key": restoring it deletes the key


def restore(table: dict[Any, Any], key: Any, old: Any) -> None:
    """Put ``table[key]`` back to ``old`` (deleting it when it was MISSING)."""
    if old is MISSING:
        table.pop(key, None)
    else:
        table[key] = old


def put(undo: Undo, table: dict[Any, Any], key: Any, value: Any) -> None:
    """``table[key] = value``, undoably."""
    undo.append((restore, table, key, table.get(key, MISSING)))
    table[key] = value


def pop(undo: Undo, table: dict[Any, Any], key: Any) -> Any:
    """``table.pop(key, None)``, undoably; returns what was there (or None)."""
    old = table.pop(key, MISSING)
    if old is MISSING:
        return None
    undo.append((restore, table, key, old))
    return old


def add(undo: Undo, counts: dict[Any, int], key: Any, n: int) -> None:
    """``counts[key] += n`` (from 0), undoably."""
    undo.append((restore, counts, key, counts.get(key, MISSING)))
    counts[key] = counts.get(key, 0) + n


def set_attr(undo: Undo, obj: object, name: str, value: Any) -> None:
    """``setattr(obj, name, value)``, undoably."""
    undo.append((setattr, obj, name, getattr(obj, name)))
    setattr(obj, name, value)


def rollback(undo: Undo) -> None:
    """Run the inverses newest first and empty the journal."""
    while undo:
        entry = undo.pop()
        fn: Callable[..., object] = entry[0]
        fn(*entry[1:])
