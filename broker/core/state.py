"""The core's parts, wired together once: what every handler is given.

Each part owns its data and keeps its own invariants (see docs/architecture.md for the table);
this object only holds them, with the settings, the clock and the store they share, and the
undo journal they all write to. It decides nothing.
"""
from __future__ import annotations

import logging
import random

from shoal.conf.settings import Settings

from ..storage.contract import CoreStore
from .quiet import QuietLog, Strikes
from .admission import Admission
from .cron import CronState
from .dispatch import Dispatch
from .effects import Clock, Effects
from .groups import Groups
from .history import HistoryRequests
from .jobs import JobTable
from .leases import Leases
from .schedule import Timetable
from .undo import Undo
from .waiters import Waiters

log = logging.getLogger("shoal.broker")


class Core:
    """Every part of the broker's state, for the handlers."""

    def __init__(self, store: CoreStore, settings: Settings, clock: Clock, rng: random.Random) -> None:
        self.store, self.settings, self.clock, self.rng = store, settings, clock, rng
        self.undo: Undo = []
        self.quiet = QuietLog(log)
        self.strikes = Strikes()
        self.groups = Groups(settings)
        self.effects = Effects(clock, self.undo)
        self.timetable = Timetable(clock, self.undo)
        self.dispatch = Dispatch(settings, self.groups, self.effects, self.undo)
        self.leases = Leases(self.undo)
        self.waiters = Waiters(self.effects, self.undo)
        self.jobs = JobTable(store, clock, self.groups, self.effects, self.dispatch, self.timetable, self.leases,
                             self.waiters, self.undo)
        self.admission = Admission(store, settings, clock, self.jobs, self.dispatch, self.leases)
        self.cron = CronState(settings, self.effects, self.undo)
        self.history = HistoryRequests(self.undo)
        self.heartbeat_s = settings.broker.heartbeat_interval_s
        self.last_heartbeat = 0.0
        self.next_expiry = 0.0
