"""Each group's effective settings, looked up once (an unnamed group's are built on each call)."""
from __future__ import annotations

from shoal.conf.settings import GroupSettings, Settings


class Groups:
    """``groups(name)``: the settings of a group, cached."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cache: dict[str, GroupSettings] = {}

    def __call__(self, group: str) -> GroupSettings:
        found = self._cache.get(group)
        if found is None:
            found = self._cache[group] = self.settings.group(group)
        return found

    def longest_lease_s(self) -> float:
        """The longest lease of any group: how long a job running at start may wait for its worker."""
        return float(max(g.lease_s for g in [self.settings.defaults, *self.settings.groups.values()]))
