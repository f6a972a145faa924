"""The broker's core: its state in parts that own it, the handlers over them, one command table.

Imports no zmq, lmdb or subprocess (tests/test_core_layout.py checks): the shell in
``broker/shell/server.py`` receives, calls ``Broker.handle`` and ``tick``, commits and sends.
"""
from .broker import Broker
from .demand import Demand
from .effects import Clock, Outgoing

__all__ = ["Broker", "Clock", "Demand", "Outgoing"]
