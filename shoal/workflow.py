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
    timeout_s: float | None = None   # enforced for async handlers (a thread cannot be killed)

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
    """
    if retries is not None and retries < 0:
        raise ValueError("retries must be >= 0")

    def wrap(fn: Callable[..., Any]) -> Workflow:
        return Workflow(name=name or fn.__name__.replace("_", "-"), fn=fn, group=worker,
                        retries=retries, timeout_s=timeout)

    return wrap


def workflows_in(module: ModuleType) -> list[Workflow]:
    """The workflows defined at the top level of a module."""
    return [v for v in vars(module).values() if isinstance(v, Workflow)]


def load_workflows(modules: Iterable[str], group: str | None = None) -> dict[str, Workflow]:
    """Import app modules and return their workflows (only ``group``'s when given), by name."""
    found: dict[str, Workflow] = {}
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"cannot import app module {module_name!r}: {exc}") from exc
        for wf in workflows_in(module):
            if group is not None and wf.group != group:
                continue
            other = found.get(wf.name)
            if other is not None and other.fn is not wf.fn:
                raise ConfigError(f"two workflows are named {wf.name!r} (in {module_name})")
            found[wf.name] = wf
    return found
