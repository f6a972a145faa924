"""The Shoal client library."""
from .client import AsyncClient, CancelResult, Client, HistoryEntry, JobId, Result, Stats, StepInfo

__all__ = ["AsyncClient", "CancelResult", "Client", "HistoryEntry", "JobId", "Result", "Stats", "StepInfo"]
