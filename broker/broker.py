"""``from shoal.broker.broker import Broker`` keeps working: the broker lives in ``broker/core/``."""
from .core.broker import Broker

__all__ = ["Broker"]
