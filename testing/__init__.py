"""``shoal.testing``: run your workflows on the real broker core, in process, in virtual time.

    from shoal.testing import Simulation

    with Simulation(myapp.workflows) as sim:
        job_id = sim.client.enqueue("send-email", {"to": "a@b.c"})
        result = sim.client.wait(job_id, timeout=600)   # virtual seconds

Only your tests import this package; nothing in Shoal itself does.
"""
from .clock import VirtualClock
from .simulation import Simulation

__all__ = ["Simulation", "VirtualClock"]
