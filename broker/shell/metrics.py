"""Per-group metrics in the Prometheus text format, served over HTTP from a side thread.

The broker loop renders the text (at most once a second) and swaps it in; the HTTP
thread only reads that string, so it never touches broker state.
"""
from __future__ import annotations

import hmac
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from shoal.errors import CannotListen

log = logging.getLogger("shoal.broker.metrics")

# name, stats key, type, help
METRICS = (
    ("shoal_jobs_pending", "pending", "gauge", "Jobs waiting for a worker slot."),
    ("shoal_jobs_scheduled", "scheduled", "gauge", "Jobs waiting for a due time (delay, retry backoff, sleep)."),
    ("shoal_jobs_running", "running", "gauge", "Jobs leased to a worker."),
    ("shoal_jobs_dead", "dead", "gauge", "Jobs in the dead-letter list."),
    ("shoal_jobs_completed_total", "completed", "counter", "Jobs completed."),
    ("shoal_attempts_failed_total", "failed", "counter", "Attempts that failed."),
    ("shoal_jobs_retried_total", "retried", "counter", "Retries scheduled."),
    ("shoal_workers", "workers", "gauge", "Connected worker processes."),
    ("shoal_free_slots", "free_slots", "gauge", "Free slots advertised by connected workers."),
    ("shoal_oldest_pending_seconds", "oldest_pending_s", "gauge", "Age of the oldest pending job."),
    ("shoal_starving", "starvation", "gauge", "1 when work waits past the threshold with no slot to take it."),
)


def render(groups: dict[str, dict[str, Any]], events_dropped: int) -> str:
    """The exposition text for a stats snapshot."""
    lines: list[str] = []
    for name, key, kind, text in METRICS:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        for group, row in sorted(groups.items()):
            value = row.get(key, 0)
            lines.append(f'{name}{{group="{_escape(group)}"}} {float(value) if not isinstance(value, bool) else int(value)}')
    lines += ["# HELP shoal_events_dropped_total Lifecycle events dropped for slow subscribers.",
              "# TYPE shoal_events_dropped_total counter", f"shoal_events_dropped_total {events_dropped}"]
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """A tiny HTTP server answering GET /metrics with the latest rendered text."""

    def __init__(self, host_port: str, token: str = "") -> None:
        host, port = host_port.rsplit(":", 1)
        self.text = "# no metrics yet\n"
        owner = self
        wanted = f"Bearer {token}".encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                sent = (self.headers.get("Authorization") or "").encode()
                if token and not hmac.compare_digest(sent, wanted):  # constant time: no guessing byte by byte
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Bearer realm="shoal metrics"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = owner.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug(format, *args)

        address = host.strip("[]")
        server = _Server6 if ":" in address else ThreadingHTTPServer  # an IPv6 address: [::1]:9100
        try:
            self.httpd = server((address, int(port)), Handler)
        except OSError as exc:
            raise CannotListen(f"cannot serve metrics on {host_port} ([broker] metrics): {exc.strerror or exc}") from None
        self.httpd.daemon_threads = True
        self.address = f"{host}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, name="shoal-metrics", daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
