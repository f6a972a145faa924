"""The broker's shell: the poll loop, sockets and their security, events, metrics, the data-dir
lock, the CLI and the supervisor. No decisions: those are the core's (``broker/core``)."""
