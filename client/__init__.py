"""The Shoal client library."""
from .client import AsyncClient, Client, Result, Stats, StepInfo

__all__ = ["AsyncClient", "Client", "Result", "Stats", "StepInfo"]
