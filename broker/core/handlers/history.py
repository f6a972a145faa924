"""HISTORY: one job's whole history, read from the log (``shoal job why ID``).

The log has no per-job index yet, so this is a scan of the whole log (a byte search skips
other jobs' entries without decoding them). It runs off the loop: the request is set aside
here (``HistoryRequests``), and the shell hands it to its reader thread after this pass
commits. History outlives the job: entries stay after the record expires, until compaction.
"""
from __future__ import annotations

from shoal import messages as M
from shoal import protocol as P

from ..state import Core


def on_history(core: Core, identity: bytes, msg: M.JobRequest) -> None:
    busy = core.history.busy(identity)
    if busy is not None:
        core.effects.error(identity, msg.rid, P.E_BUSY, busy)
        return
    core.history.want(identity, msg.rid, msg.id)
