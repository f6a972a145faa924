"""shoal.conf: the file, the environment and the flags, checked once and combined in order."""
from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from shoal.conf import (
    DEFAULT_BIND,
    DEFAULT_DATA,
    DEFAULT_GROUP,
    GroupSettings,
    Settings,
    load_settings,
)
from shoal.conf.durations import format_duration, parse_duration, parse_size
from shoal.conf.problems import KeyLines
from shoal.conf.show import main, render
from shoal.errors import ConfigError

# Every level of the precedence chain sets `concurrency` to its own value, and
# `retries` to mark how far down it reaches, so one file shows who wins.
LAYERED = """\
[workflows]
concurrency = 2
retries = 2

[workflows.media]
concurrency = 3
retries = 3

[servers.lax.workflows]
concurrency = 4
retries = 4

[servers.lax.workflows.media]
concurrency = 5

[servers.sfo.workflows.media]
concurrency = 6
"""


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ./shoal.toml and SHOAL_* are read when present: keep every test away from real ones.
    monkeypatch.chdir(tmp_path)
    for name in ("SHOAL_CONFIG", "SHOAL_SERVER", "SHOAL_BROKER", "SHOAL_DATA"):
        monkeypatch.delenv(name, raising=False)


def write(tmp_path: Path, text: str, name: str = "shoal.toml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def load(
    path: str | None,
    *,
    server: str = "lax",
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
) -> Settings:
    """load_settings for server "lax" with an empty environment unless a test says otherwise."""
    return load_settings(path, server=server, env=env or {}, flags=flags)


def config_error(
    path: str | None, *, server: str = "lax", env: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
) -> str:
    with pytest.raises(ConfigError) as caught:
        load(path, server=server, env=env, flags=flags)
    return str(caught.value)


# --- precedence -----------------------------------------------------------------
def test_builtin_defaults_apply_without_a_file() -> None:
    settings = load(None)
    assert settings.path is None
    assert list(settings.groups) == [DEFAULT_GROUP]
    assert settings.groups[DEFAULT_GROUP] == GroupSettings(name=DEFAULT_GROUP)
    assert settings.broker.bind == DEFAULT_BIND and settings.broker.data == DEFAULT_DATA
    assert set(settings.sources[DEFAULT_GROUP].values()) == {"default"}
    assert "backoff" in settings.sources[DEFAULT_GROUP]  # TOML names, not backoff_s


def test_workflows_table_beats_builtin_defaults(tmp_path: Path) -> None:
    settings = load(write(tmp_path, "[workflows]\nconcurrency = 2\n"))
    default = settings.groups[DEFAULT_GROUP]
    assert default.concurrency == 2
    assert settings.sources[DEFAULT_GROUP]["concurrency"] == "[workflows]"
    assert settings.sources[DEFAULT_GROUP]["retries"] == "default"


def test_group_table_beats_workflows_table(tmp_path: Path) -> None:
    settings = load(write(tmp_path, LAYERED), server="elsewhere")
    assert settings.groups["media"].concurrency == 3
    assert settings.sources["media"]["concurrency"] == "[workflows.media]"
    assert settings.groups[DEFAULT_GROUP].concurrency == 2


def test_server_workflows_table_beats_group_table(tmp_path: Path) -> None:
    settings = load(write(tmp_path, LAYERED), server="lax")
    assert settings.groups["media"].retries == 4
    assert settings.sources["media"]["retries"] == "[servers.lax.workflows]"


def test_server_group_table_beats_server_workflows_table(tmp_path: Path) -> None:
    settings = load(write(tmp_path, LAYERED), server="lax")
    assert settings.groups["media"].concurrency == 5
    assert settings.sources["media"]["concurrency"] == "[servers.lax.workflows.media]"


def test_flag_beats_server_group_table(tmp_path: Path) -> None:
    settings = load(write(tmp_path, LAYERED), server="lax", flags={"concurrency": 9})
    assert settings.groups["media"].concurrency == 9
    assert settings.sources["media"]["concurrency"] == "flag"


def test_each_server_sees_only_its_own_blocks(tmp_path: Path) -> None:
    path = write(tmp_path, LAYERED)
    lax, sfo = load(path, server="lax"), load(path, server="sfo")
    assert (lax.groups["media"].concurrency, sfo.groups["media"].concurrency) == (5, 6)
    assert sfo.sources["media"]["concurrency"] == "[servers.sfo.workflows.media]"
    assert (lax.groups[DEFAULT_GROUP].retries, sfo.groups[DEFAULT_GROUP].retries) == (4, 2)


def test_defaults_take_workflows_and_server_block_but_no_group_table(tmp_path: Path) -> None:
    settings = load(write(tmp_path, LAYERED), server="lax")
    assert settings.defaults.name == DEFAULT_GROUP
    assert (settings.defaults.concurrency, settings.defaults.retries) == (4, 4)
    assert settings.group("unnamed").concurrency == 4
    assert settings.group("unnamed").name == "unnamed"


def test_group_flags_reach_groups_absent_from_the_file(tmp_path: Path) -> None:
    settings = load(write(tmp_path, LAYERED), flags={"concurrency": 7, "app": "a.b,c"})
    assert settings.group("unnamed").concurrency == 7
    assert settings.group("media").app == ("a.b", "c")
    assert settings.sources["media"]["app"] == "flag"


def test_group_named_only_in_this_servers_block_is_a_group_here(tmp_path: Path) -> None:
    path = write(tmp_path, "[servers.lax.workflows.video]\nworkers = 2\n")
    settings = load(path, server="lax")
    assert list(settings.groups) == [DEFAULT_GROUP, "video"]
    assert settings.groups["video"].workers == 2
    assert settings.unknown_server_groups == {}


def test_group_referenced_only_under_another_server_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, LAYERED + "\n[servers.sfo.workflows.video]\nworkers = 2\n")
    settings = load(path, server="lax")
    assert "video" not in settings.groups
    assert settings.unknown_server_groups == {"sfo": ["video"]}
    assert "[servers.sfo.workflows.video]" in render(settings)


# --- where the file and the server name come from ----------------------------
def test_config_file_comes_from_flag_then_env_then_cwd(tmp_path: Path) -> None:
    cwd = write(tmp_path, "[workflows]\nretries = 1\n")
    from_env = write(tmp_path, "[workflows]\nretries = 2\n", name="env.toml")
    explicit = write(tmp_path, "[workflows]\nretries = 3\n", name="flag.toml")
    env = {"SHOAL_CONFIG": from_env}
    assert load(explicit, env=env).defaults.retries == 3
    assert load(None, env=env).defaults.retries == 2
    assert load(None).defaults.retries == 1
    assert load(None).path == "shoal.toml" and Path(cwd).name == "shoal.toml"


def test_missing_explicit_file_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    assert config_error(missing) == f"{missing}: config file not found (named by --config)"
    assert "named by SHOAL_CONFIG" in config_error(None, env={"SHOAL_CONFIG": missing})


def test_server_name_comes_from_flag_then_env_then_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "box-1")
    env = {"SHOAL_SERVER": "from-env"}
    assert load_settings(env=env, flags={"server": "from-flag"}).server == "from-flag"
    assert load_settings(env=env).server == "from-env"
    assert load_settings(env={}).server == "box-1"


# --- environment and flags ---------------------------------------------------------
def test_env_beats_broker_table_and_flags_beat_env(tmp_path: Path) -> None:
    path = write(tmp_path, '[broker]\nbind = "tcp://127.0.0.1:6000"\ndata = "/var/shoal"\n')
    env = {"SHOAL_BROKER": "ipc:///tmp/shoal.sock", "SHOAL_DATA": "/srv/shoal"}
    settings = load(path, env=env, flags={"data": "/flag/data"})
    assert settings.broker.bind == "ipc:///tmp/shoal.sock"
    assert settings.broker.data == "/flag/data"
    assert settings.broker_sources["bind"] == "env"
    assert settings.broker_sources["data"] == "flag"


def test_flags_given_as_text_are_read_like_the_environment() -> None:
    settings = load(None, flags={"concurrency": "12", "supervise": "false", "bind": None})
    assert settings.defaults.concurrency == 12
    assert settings.broker.supervise is False
    assert settings.broker_sources["bind"] == "default"  # None means "flag not given"


def test_bad_env_value_names_the_variable() -> None:
    message = config_error(None, env={"SHOAL_BROKER": "localhost:5555"})
    assert message == (
        'environment: SHOAL_BROKER: expected a ZeroMQ endpoint like "tcp://127.0.0.1:5555",'
        ' found "localhost:5555"'
    )


def test_bad_flag_value_names_the_flag() -> None:
    message = config_error(None, flags={"concurrency": 0})
    assert message == "flags: concurrency: expected an integer >= 1, found 0"


def test_unknown_flag_key_is_refused() -> None:
    assert 'did you mean "bind"' in config_error(None, flags={"bnid": "tcp://x:1"})


# --- [broker] and [cron] -----------------------------------------------------------
def test_broker_table_reads_sizes_and_durations(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        [broker]
        max_message_bytes = "1MiB"
        heartbeat_interval = "250ms"
        map_size = "2GiB"
        supervise = false
        """)
    broker = load(path).broker
    assert broker.max_message_bytes == 2**20
    assert broker.heartbeat_interval_s == 0.25
    assert broker.map_size_mb == 2048
    assert broker.supervise is False


def test_broker_spin_is_a_short_duration(tmp_path: Path) -> None:
    assert load(None).broker.spin_s == 0.0005  # on by default: half a millisecond
    assert load(write(tmp_path, '[broker]\nspin = "2ms"\n')).broker.spin_s == 0.002
    assert load(write(tmp_path, "[broker]\nspin = 0\n")).broker.spin_s == 0.0
    message = config_error(write(tmp_path, '[broker]\nheartbeat_interval = "1s"\nspin = "1s"\n'))
    assert message.endswith('shoal.toml:3: broker.spin: expected a duration from 0 to 10ms, like "0.5ms", found "1s"')
    assert 'like "0.5ms"' in config_error(write(tmp_path, '[broker]\nspin = "fast"\n'))


def test_group_keys_are_converted_to_their_fields(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        [workflows.media]
        app = ["a.workflows", "b"]
        backoff = "1.5s"
        backoff_max = "5m"
        lease = 30
        grace = 0
        max_memory = "512MiB"
        retention = "7d"
        nice = -5
        """)
    media = load(path).groups["media"]
    assert media.app == ("a.workflows", "b")
    assert (media.backoff_s, media.backoff_max_s, media.lease_s, media.grace_s) == (1.5, 300.0, 30.0, 0.0)
    assert (media.max_memory_mb, media.retention_s, media.nice) == (512, 7 * 86400.0, -5)


def test_cron_entries_are_kept_with_defaults_filled_in(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        [cron.nightly-report]
        workflow = "report"
        schedule = "0 3 * * *"
        payload = { kind = "daily" }
        catch_up = "one"
        """)
    entry = load(path).cron["nightly-report"]
    assert entry == {
        "workflow": "report",
        "schedule": "0 3 * * *",
        "payload": {"kind": "daily"},
        "group": None,
        "timezone": None,
        "enabled": True,
        "catch_up": "one",
    }


def test_cron_entry_without_schedule_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[cron.nightly]\nworkflow = "report"\ncatch_up = "some"\n')
    assert config_error(path).splitlines() == [
        f'{path}:3: cron.nightly.catch_up: expected one of "none", "one", "all", found "some"',
        f'{path}:1: cron.nightly: missing required key "schedule"',
    ]


# --- error messages ----------------------------------------------------------------
def test_unknown_key_suggests_the_closest_one(tmp_path: Path) -> None:
    path = write(tmp_path, "[workflows]\nretries = 1\n\n[workflows.media]\nconcurency = 4\n")
    assert config_error(path) == f'{path}:5: workflows.media.concurency: unknown key; did you mean "concurrency"?'


def test_wrong_type_says_what_was_expected_and_found(tmp_path: Path) -> None:
    path = write(tmp_path, '[workflows]\nretries = "three"\n')
    assert config_error(path) == f'{path}:2: workflows.retries: expected an integer >= 0, found "three"'


def test_negative_count_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[workflows.email]\nconcurrency = 2\nworkers = -1\n")
    assert config_error(path) == f"{path}:3: workflows.email.workers: expected an integer >= 0, found -1"


def test_zero_concurrency_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[servers.lax.workflows.email]\nconcurrency = 0\n")
    expected = f"{path}:2: servers.lax.workflows.email.concurrency: expected an integer >= 1, found 0"
    assert config_error(path) == expected


def test_bad_duration_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[workflows]\nidle_timeout = "5 minutes"\n')
    assert config_error(path) == (
        f'{path}:2: workflows.idle_timeout: expected a duration like "60s", "5m", "1h" or seconds,'
        ' found "5 minutes"'
    )


def test_zero_lease_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[workflows]\nlease = "0s"\n')
    assert config_error(path) == f'{path}:2: workflows.lease: expected a duration > 0, found "0s"'


def test_bad_toml_syntax_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[workflows]\nretries = 1\nconcurrency = \n")
    message = config_error(path)
    assert message.startswith(f"{path}:3: invalid TOML: ")
    assert "(at line 3, column 15)" in message


def test_unknown_top_level_table_suggests_the_closest_one(tmp_path: Path) -> None:
    path = write(tmp_path, '[workflows]\nretries = 1\n[brokr]\nbind = "tcp://a:1"\n')
    assert config_error(path) == f'{path}:3: brokr: unknown table; did you mean "broker"?'


def test_table_of_the_wrong_type_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, 'workflows = "email"\n[servers]\nlax = 3\n')
    assert config_error(path).splitlines() == [
        f'{path}:1: workflows: expected a table [workflows], found "email"',
        f"{path}:3: servers.lax: expected a table [servers.lax], found 3",
    ]


def test_other_servers_blocks_are_checked_too(tmp_path: Path) -> None:
    path = write(tmp_path, "[servers.sfo.workflows]\nretries = -2\n")
    assert "servers.sfo.workflows.retries: expected an integer >= 0, found -2" in config_error(path, server="lax")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "[workflows]\nworkers = -1\nnice = 40\n")
    assert config_error(path).splitlines() == [
        f"{path}:2: workflows.workers: expected an integer >= 0, found -1",
        f"{path}:3: workflows.nice: expected an integer from -20 to 19, found 40",
    ]


def test_line_numbers_follow_dotted_and_quoted_keys() -> None:
    lines = KeyLines('[workflows]\nmedia.workers = 1\n\n["servers"."eu.1".workflows]\n"x y" = 2\n')
    assert lines.line_of(("workflows", "media", "workers")) == 2
    assert lines.line_of(("servers", "eu.1", "workflows", "x y")) == 5
    assert lines.line_of(("servers", "eu.1", "workflows", "missing")) == 4
    assert lines.line_of(("nowhere",)) is None


# --- durations and sizes -----------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [("60s", 60.0), ("5m", 300.0), ("1h", 3600.0), ("1d", 86400.0), ("250ms", 0.25),
     ("1.5s", 1.5), (30, 30.0), (2.5, 2.5), ("45", 45.0), (" 2 m ", 120.0)],
)
def test_duration_parses(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "", "-5s", "1w", "s", True, None, float("inf"), [1]])
def test_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (60, "1m"), (90, "90s"), (0.25, "250ms"), (86400, "1d"), (0.0005, "0.5ms")])
def test_duration_formats_back_to_what_parses(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [("16MiB", 16 * 2**20), ("1GB", 10**9), ("512kib", 512 * 1024), ("1.5KiB", 1536), (3, 3 * 2**20)],
)
def test_size_parses(text: object, size: int) -> None:
    assert parse_size(text, bare_unit=2**20) == size


def test_max_memory_in_decimal_units_rounds_up_to_whole_mib(tmp_path: Path) -> None:
    path = write(tmp_path, '[workflows]\nmax_memory = "1GB"\n[workflows.small]\nmax_memory = "1KB"\n')
    settings = load(path)
    assert settings.defaults.max_memory_mb == 954  # 10**9 bytes is 953.7 MiB
    assert settings.groups["small"].max_memory_mb == 1  # never rounded down to 0, "no limit"


# --- config --show -----------------------------------------------------------------
def test_render_json_has_value_and_source_per_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[workflows]\napp = "myapp.workflows"\n[workflows.email]\nbackoff = "2m"\n')
    shown = json.loads(render(load(path), as_json=True))
    assert set(shown) == {"server", "groups"} and shown["server"] == "lax"
    assert set(shown["groups"]) == {"default", "email"}
    email = shown["groups"]["email"]
    assert email["backoff"] == {"value": 120.0, "source": "[workflows.email]"}
    assert email["app"] == {"value": ["myapp.workflows"], "source": "[workflows]"}
    assert email["lease"] == {"value": 10.0, "source": "default"}
    assert all(set(cell) == {"value", "source"} for cell in email.values())


def test_render_text_shows_value_and_source_per_group(tmp_path: Path) -> None:
    text = render(load(write(tmp_path, LAYERED), server="lax"))
    rows = [line.split() for line in text.splitlines()]
    assert ["media", "concurrency", "5", "[servers.lax.workflows.media]"] in rows
    assert ["default", "lease", "10s", "default"] in rows
    assert ["bind", DEFAULT_BIND, "default"] in rows


def test_config_show_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, LAYERED)
    assert main(["--show", "--json", "--server", "sfo", "--config", path]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["server"] == "sfo"
    assert shown["groups"]["media"]["concurrency"]["value"] == 6


def test_config_show_reports_config_errors_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[workflows]\nconcurency = 4\n")
    assert main(["--show", "--config", path]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert 'workflows.concurency: unknown key; did you mean "concurrency"?' in captured.err


# --- [cron] schedules and time zones ---------------------------------------------------
def test_cron_catch_up_defaults_to_one(tmp_path: Path) -> None:
    path = write(tmp_path, '[cron.nightly]\nworkflow = "report"\nschedule = "0 3 * * *"\n')
    assert load(path).cron["nightly"]["catch_up"] == "one"


def test_cron_accepts_seconds_and_a_time_zone(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        [cron.tick]
        workflow = "ping"
        schedule = "* * * * * */5"
        timezone = "Europe/Paris"
        """)
    entry = load(path).cron["tick"]
    assert (entry["schedule"], entry["timezone"]) == ("* * * * * */5", "Europe/Paris")


def test_bad_cron_schedule_names_the_entry_and_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, '[cron.nightly]\nworkflow = "report"\nschedule = "61 * * * *"\n')
    assert config_error(path) == (
        f'{path}:3: cron.nightly.schedule: expected a cron expression (5 fields, or 6 with seconds), '
        'found "61 * * * *": the minute field "61" is not acceptable, out of range'
    )


def test_cron_schedule_with_a_year_field_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[cron.nightly]\nworkflow = "report"\nschedule = "0 0 1 1 * 0 2030"\n')
    assert config_error(path).endswith('found "0 0 1 1 * 0 2030": it has 7 fields')


def test_cron_schedule_that_never_fires_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[cron.never]\nworkflow = "report"\nschedule = "0 0 30 2 *"\n')
    assert config_error(path).endswith('found "0 0 30 2 *": no date ever matches it')


def test_cron_schedule_of_the_wrong_type_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[cron.nightly]\nworkflow = "report"\nschedule = 5\n')
    assert config_error(path) == (
        f"{path}:3: cron.nightly.schedule: expected a cron expression (5 fields, or 6 with seconds), found 5"
    )


def test_unknown_cron_time_zone_names_the_entry(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        [cron.nightly]
        workflow = "report"
        schedule = "0 3 * * *"
        timezone = "Mars/Olympus"
        """)
    assert config_error(path) == (
        f'{path}:4: cron.nightly.timezone: expected an IANA time zone like "Europe/Paris" or "UTC", '
        'found "Mars/Olympus": no such zone in the time zone database'
    )
