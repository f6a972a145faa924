"""The Shoal client library."""
from .client import AsyncClient, Client, Result, Stats

__all__ = ["AsyncClient", "Client", "Result", "Stats"]
