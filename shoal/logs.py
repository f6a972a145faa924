"""Logging set-up shared by the commands: text for people, JSON lines for machines."""
from __future__ import annotations

import argparse

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with any ``extra=`` fields kept."""

    _skip = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in self._skip})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """Human lines; ``extra=`` fields (job, workflow, group, attempt, duration_ms...) follow as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in JsonFormatter._skip}
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger once for a command-line process."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def logging_json() -> bool:
    """True when this process logs JSON lines (``--log-format json``)."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)


def banner(logger: str, message: str, **fields: object) -> None:
    """Print the one start line (what it listens on / connects to) to stdout.

    Plain text normally; with ``--log-format json`` the same JSON object a log line
    would be (``msg`` holds the text, ``fields`` ride along), so every line is JSON.
    """
    if logging_json():
        record = logging.makeLogRecord({"name": logger, "levelno": logging.INFO, "levelname": "INFO",
                                        "msg": message, **fields})
        message = JsonFormatter().format(record)
    print(message, flush=True)


def child_line(line: str, group: str, pid: int, *, as_json: bool) -> str:
    """One line of a broker-started worker's output, marked with its group and pid.

    Text: ``[media 4242] `` in front. JSON: the worker's own JSON object gains
    ``worker_group`` and ``worker_pid``; a line that is not JSON (a crash before
    logging was set up, a handler's print) is wrapped in one, so the stream stays JSON.
    """
    text = line.rstrip("\n")
    if not as_json:
        return f"[{group} {pid}] {text}\n"
    try:
        found = json.loads(text)
    except ValueError:
        found = None
    if not isinstance(found, dict):
        found = {"ts": round(time.time(), 3), "level": "info", "logger": "shoal.worker.output", "msg": text}
    found.update(worker_group=group, worker_pid=pid)
    return json.dumps(found, default=str) + "\n"


def add_log_options(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--log-format``, the same on every command that runs a process (broker, worker)."""
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="least severe level logged (default info; debug adds one line per lifecycle event)")
    parser.add_argument("--log-format", default="text", choices=["text", "json"],
                        help="text for people, or json: every line one JSON object (default text)")
