"""RQ's no-op task, alone in a module that imports nothing: RQ's default worker forks a child per
job and imports the task's module in that child, so a heavier module would be timed, not RQ."""


def noop(i: int) -> None:
    """The no-op task."""
    return None
