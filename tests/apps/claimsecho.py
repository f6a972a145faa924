"""A second app that declares `echo` in another group: the broker must refuse it."""
from shoal import workflow


@workflow("echo", worker="other")
def echo(payload):
    return payload
