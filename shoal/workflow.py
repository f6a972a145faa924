"""The ``@workflow`` decorator and the object it makes.

There is no global registry: a workflow is an attribute of its app module, and a
worker finds the workflows of its group by importing the modules it is told to.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType
from typing import Any, Callable, Iterable

from .errors import ConfigError

DEFAULT_GROUP = "default"


@dataclass(frozen=True)
class Workflow:
    """A named handler bound to a worker group."""

    name: str
    fn: Callable[..., Any]
    group: str = DEFAULT_GROUP
    retries: int | None = None       # None: the group's `retries` setting
    timeout_s: float | None = None   # None: the group's `timeout` setting; 0 = no limit

    @cached_property
    def is_async(self) -> bool:
        """True for ``async def`` handlers, which run on the worker's event loop."""
        return inspect.iscoroutinefunction(self.fn)

    @cached_property
    def wants_step(self) -> bool:
        """Whether the handler takes the ``step`` argument after the payload."""
        params = [p for p in inspect.signature(self.fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        return len(params) >= 2

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the handler directly, as plain Python (handy in unit tests)."""
        return self.fn(*args, **kwargs)


def workflow(name: str | None = None, *, worker: str = DEFAULT_GROUP, retries: int | None = None,
             timeout: float | None = None) -> Callable[[Callable[..., Any]], Workflow]:
    """Declare a handler as a workflow of group ``worker``.

    ``@workflow("send-email", worker="email", retries=5)`` on ``def handler(payload, step)``
    or ``async def``. Raising ``shoal.Permanent`` skips the remaining retries.
    ``timeout`` (seconds; 0 = none) beats the group's ``timeout`` setting: a run past it is
    cancelled (``step.cancelled`` for sync handlers) and fails with kind ``timeout``.
    """
    if retries is not None and retries < 0:
        raise ValueError("retries must be >= 0")
    if timeout is not None and not timeout >= 0:
        raise ValueError("timeout must be a number of seconds >= 0 (0 = no limit)")

    def wrap(fn: Callable[..., Any]) -> Workflow:
        return Workflow(name=name or fn.__name__.replace("_", "-"), fn=fn, group=worker,
                        retries=retries, timeout_s=timeout)

    return wrap


def workflows_in(module: ModuleType) -> list[Workflow]:
    """The workflows defined at the top level of a module."""
    return [v for v in vars(module).values() if isinstance(v, Workflow)]


def load_workflows(modules: Iterable[str], group: str | None = None) -> dict[str, Workflow]:
    """Import app modules and return their workflows (only ``group``'s when given), by name."""
    return select(import_workflows(modules), group)


def import_workflows(modules: Iterable[str]) -> list[tuple[str, Workflow]]:
    """Import app modules; every workflow they define, with the module it was found in."""
    found: list[tuple[str, Workflow]] = []
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"cannot import app module {module_name!r}: {exc}") from exc
        found.extend((module_name, wf) for wf in workflows_in(module))
    return found


def select(found: list[tuple[str, Workflow]], group: str | None) -> dict[str, Workflow]:
    """The workflows of ``group`` (all when None) by name; two different ones with one name are an error."""
    chosen: dict[str, Workflow] = {}
    for module_name, wf in found:
        if group is not None and wf.group != group:
            continue
        other = chosen.get(wf.name)
        if other is not None and other.fn is not wf.fn:
            raise ConfigError(f"two workflows are named {wf.name!r} (in {module_name})")
        chosen[wf.name] = wf
    return chosen


def by_group(found: list[tuple[str, Workflow]]) -> dict[str, list[str]]:
    """Workflow names per group, sorted: what a worker says it found."""
    groups: dict[str, set[str]] = {}
    for _, wf in found:
        groups.setdefault(wf.group, set()).add(wf.name)
    return {group: sorted(names) for group, names in sorted(groups.items())}
