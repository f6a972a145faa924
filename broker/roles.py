"""Who may send which command: decided in the core's command table (``core/commands.py``).

Kept importable here for the shell's transport security, which names ``Principal`` from this module."""
from .core.commands import ADMIN, CLIENT, ROLE_OF, WORKER, Principal, refusal

__all__ = ["ADMIN", "CLIENT", "ROLE_OF", "WORKER", "Principal", "refusal"]
