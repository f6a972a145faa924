"""The frozen settings objects that components take (config is constructor arguments)."""
from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_BIND = "tcp://127.0.0.1:5555"
DEFAULT_DATA = ".shoal"
DEFAULT_GROUP = "default"


@dataclass(frozen=True)
class GroupSettings:
    """Effective settings of one worker group (after the precedence chain)."""

    name: str = DEFAULT_GROUP
    app: tuple[str, ...] = ()          # modules a worker of this group imports
    workers: int = 0                   # always-on processes; 0 = scale to zero
    max_workers: int = 1               # cap for scale-up of a scaled-to-zero group
    concurrency: int = 10              # parallel runs per worker process
    retries: int = 3                   # retries after the first attempt
    backoff_s: float = 1.0             # first retry delay; doubles with jitter
    backoff_max_s: float = 300.0
    idle_timeout_s: float = 60.0
    lease_s: float = 10.0              # a worker silent this long loses its leases
    grace_s: float = 30.0              # drain time on SIGTERM
    timeout_s: float = 0.0             # a run past this fails with kind `timeout` (0 = no limit)
    nice: int = 0
    max_jobs: int = 0                  # recycle a worker after this many jobs (0 = never)
    max_memory_mb: int = 0             # recycle a worker above this RSS (0 = never)
    retention_s: float = 86400.0       # finished jobs and results are kept this long
    rate_per_s: float = 0.0            # global dispatch rate limit for the group (0 = none)
    max_pending: int = 0               # enqueue raises GroupSaturated beyond this backlog (0 = unbounded)
    starvation_s: float = 60.0         # pending this long with no free slot or no worker = starving


@dataclass(frozen=True)
class BrokerSettings:
    """Settings of the broker process."""

    bind: str = DEFAULT_BIND
    data: str = DEFAULT_DATA
    max_message_bytes: int = 16 * 1024 * 1024
    max_step_bytes: int = 1024 * 1024      # largest encoded step.run result
    heartbeat_interval_s: float = 1.0
    map_size_mb: int = 1024            # initial LMDB map; it grows on demand
    max_size_mb: int = 0               # storage cap: enqueues are refused near it (0 = the disk's size)
    min_free_disk_mb: int = 64          # enqueues are refused while the disk has less room than this
    snapshot_interval_s: float = 600.0  # snapshot (and drop the log behind it) this often...
    snapshot_entries: int = 1_000_000   # ...or after this many log entries, whichever comes first
    snapshot_keep: int = 2              # newest snapshots kept under DATA/snapshots
    supervise: bool = True
    write_ahead: bool = True           # ack after the write-ahead file's sync (false: after LMDB's own commit)
    spin_s: float = 0.0005             # after a pass that read messages, poll without sleeping this long
    events: str = ""                   # PUB endpoint for lifecycle events ("" = next to bind, any port)
    metrics: str = ""                  # host:port for Prometheus text metrics over HTTP ("" = off)
    metrics_token: str = ""            # when set, /metrics wants "Authorization: Bearer <token>"
    insecure: bool = False             # allow a non-loopback bind without [security] (no CURVE)


@dataclass(frozen=True)
class SecuritySettings:
    """``[security]``: CURVE keys. The broker's side turns CURVE on; the client side is a key to connect with."""

    broker_secret_key: str = ""        # the broker's secret certificate; set = CURVE on every broker socket
    clients: str = ""                  # directory of public keys allowed as clients
    admins: str = ""                   # directory of public keys allowed as admins
    key: str = ""                      # a client's or worker's own secret certificate
    broker_public_key: str = ""        # the broker's public certificate, to check whom we talk to
    workers: dict[str, str] = field(default_factory=dict)  # [security.workers]: group -> directory

    @property
    def on(self) -> bool:
        """True when this process is a broker that must speak CURVE."""
        return bool(self.broker_secret_key)


@dataclass(frozen=True)
class Settings:
    """Everything read from shoal.toml, the environment and the flags."""

    server: str = "localhost"
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    # built-ins, [workflows], [servers.<name>.workflows] and the group flags applied:
    # what a group named nowhere in the file gets
    defaults: GroupSettings = field(default_factory=GroupSettings)
    groups: dict[str, GroupSettings] = field(default_factory=dict)   # every named group
    sources: dict[str, dict[str, str]] = field(default_factory=dict)  # group -> key -> source
    path: str | None = None                                          # the file read, if any
    cron: dict[str, dict[str, object]] = field(default_factory=dict)  # [cron.<name>], type-checked
    # server -> groups its [servers.<name>.workflows.<group>] blocks name that no
    # [workflows.<group>] defines (other servers only): reported by `config --show`
    unknown_server_groups: dict[str, list[str]] = field(default_factory=dict)
    broker_sources: dict[str, str] = field(default_factory=dict)     # broker key -> source
    rates: dict[str, float] = field(default_factory=dict)            # [rates]: workflow -> jobs per second
    security: SecuritySettings = field(default_factory=SecuritySettings)
    security_sources: dict[str, str] = field(default_factory=dict)   # security key -> source

    def group(self, name: str) -> GroupSettings:
        """Effective settings for ``name``; a group absent from the file inherits the defaults."""
        found = self.groups.get(name)
        if found is not None:
            return found
        from dataclasses import replace

        return replace(self.defaults, name=name)
