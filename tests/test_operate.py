"""Issue 15's first hour, as an operator meets it: cron seconds, warm hand-started
workers, JSON logs, marked worker output, pipes, health, the status table's words."""
from __future__ import annotations

import json
import re
import subprocess
import sys

from shoal import cli, cli_ops
from shoal.broker.core.crontab import CronEntry, CronSchedule
from shoal.broker.core.cron_hints import seconds_first_hint

from conftest import DEFAULT_TOML, Cluster, wait_for

SUPERVISED_EMAIL = DEFAULT_TOML + """
[workflows.email]
app = "testapp"
workers = 1
concurrency = 2
"""


def shoal(capsys, *argv: str) -> tuple[int, str, str]:
    """``shoal ARGV`` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- cron: seconds are the sixth field --------------------------------------------------
def test_seconds_first_schedule_gets_a_hint_with_the_seconds_last_spelling() -> None:
    hint = seconds_first_hint("*/10 * * * * *")
    assert hint is not None and "sixth (last)" in hint and '"* * * * * */10"' in hint
    assert seconds_first_hint("0 */5 * * * *") is not None and '"*/5 * * * * 0"' in seconds_first_hint("0 */5 * * * *")


def test_seconds_last_and_five_field_schedules_get_no_hint() -> None:
    for schedule in ("* * * * * */10", "0 3 * * *", "* * * * * *", "*/5 * * * * 30", "@daily"):
        assert seconds_first_hint(schedule) is None, schedule


def test_listing_gives_the_next_three_ticks_of_a_seconds_schedule() -> None:
    schedule = CronSchedule([CronEntry("fast", "echo", "* * * * * */10")])
    now_ms = 1_700_000_003_000  # 22:13:23 UTC
    row = schedule.listing(now_ms, {"fast": now_ms})[0]
    assert row["upcoming_ms"] == [1_700_000_010_000, 1_700_000_020_000, 1_700_000_030_000]
    assert row["next_ms"] == row["upcoming_ms"][0] and row["warning"] is None


def test_disabled_entry_lists_no_upcoming_ticks() -> None:
    schedule = CronSchedule([CronEntry("off", "echo", "0 3 * * *", enabled=False)])
    assert schedule.listing(1_700_000_000_000, {})[0]["upcoming_ms"] == []


def test_broker_warns_of_and_shoal_cron_shows_a_seconds_first_schedule(cluster_factory, capsys) -> None:
    cluster = cluster_factory(DEFAULT_TOML + '\n[cron.tick]\nworkflow = "echo"\nschedule = "*/10 * * * * *"\n'
                              '\n[cron.nightly]\nworkflow = "echo"\nschedule = "0 3 * * *"\n')
    cluster.start_broker()
    assert re.search(r"cron tick: .*sixth \(last\)", cluster.broker_output())
    assert "cron nightly:" not in cluster.broker_output()
    code, out, _ = shoal(capsys, "cron", "--broker", cluster.endpoint)
    assert code == 0
    nightly = next(line for line in out.splitlines() if line.startswith("  nightly "))
    assert len(re.findall(r"\d{4}-\d\d-\d\d 03:00:00", nightly)) == 3
    assert "sixth field is seconds, and it comes last" in out
    assert 'warning: cron tick: "*/10 * * * * *"' in out


# --- scale to zero: a connected worker with free slots is warm ---------------------------
def test_hand_started_idle_worker_takes_the_job_of_a_cold_group_without_a_launch(cluster_factory) -> None:
    cluster = cluster_factory(DEFAULT_TOML + '\n[workflows.media]\napp = "testapp"\nworkers = 0\n')
    cluster.start_broker(supervise=True)
    hand = cluster.start_worker("media", 2)
    client = cluster.client()
    assert client.stats()["media"]["state"] == "warm"
    results = [client.wait(client.enqueue("media-echo", {"n": n}, group="media"), timeout=30) for n in range(3)]
    assert {r.value["pid"] for r in results} == {hand.pid}
    assert client.stats()["media"]["launches"] == 0
    assert "started worker pid" not in cluster.broker_output()


def test_cold_group_still_launches_when_the_hand_started_worker_is_full(cluster_factory, tmp_path) -> None:
    cluster = cluster_factory(DEFAULT_TOML + '\n[workflows.media]\napp = "testapp"\nworkers = 0\n'
                              'max_workers = 2\nconcurrency = 1\n')
    cluster.start_broker(supervise=True)
    cluster.start_worker("media", 1)
    client = cluster.client()
    blocked = client.enqueue("block", {"i": 1}, group="media")
    wait_for(lambda: client.get(blocked).status == "running", what="the hand worker to be busy")
    second = client.wait(client.enqueue("media-echo", {}, group="media"), timeout=30)
    assert second.status == "completed" and client.stats()["media"]["launches"] == 1
    (tmp_path / "release").write_text("")
    assert client.wait(blocked, timeout=30).status == "completed"


# --- broker-started workers' output, text and JSON -------------------------------------
def test_broker_started_worker_lines_carry_group_and_pid(cluster_factory) -> None:
    cluster = cluster_factory(SUPERVISED_EMAIL)
    cluster.start_broker(supervise=True)
    pid = int(wait_for(lambda: re.search(r"started worker pid (\d+) for group email", cluster.broker_output()),
                       what="the email worker to start").group(1))
    wait_for(lambda: f"[email {pid}] shoal worker for group 'email' connected" in cluster.broker_output(),
             what="the worker's start line, marked")


def test_json_log_format_makes_every_broker_terminal_line_json(cluster_factory) -> None:
    cluster = cluster_factory(SUPERVISED_EMAIL)
    cluster.start_broker("--log-format", "json", supervise=True)
    client = cluster.client()
    wait_for(lambda: client.stats()["email"]["workers"] == 1, what="the email worker")
    assert client.wait(client.enqueue("echo", {}, group="email"), timeout=20).status == "completed"
    wait_for(lambda: '"worker_group": "email"' in cluster.broker_output(), what="a marked worker line")
    records = [json.loads(line) for line in cluster.broker_output().splitlines()]  # fails on any plain line
    assert any("listening on" in r["msg"] for r in records if r["logger"] == "shoal.broker")
    worker_lines = [r for r in records if r.get("worker_group") == "email"]
    assert any("connected to" in r["msg"] for r in worker_lines)
    assert all(isinstance(r["worker_pid"], int) for r in worker_lines)


def test_hand_started_worker_start_line_is_json_too(cluster: Cluster) -> None:
    worker = cluster.start_worker("email", 1, "--log-format", "json")
    wait_for(lambda: "connected to" in worker.output(), what="the worker's start line")
    start = next(line for line in worker.output().splitlines() if "connected to" in line)
    assert json.loads(start)["logger"] == "shoal.worker"


def test_json_log_format_reports_a_config_error_as_json(tmp_path) -> None:
    config = tmp_path / "shoal.toml"
    config.write_text("[workflows]\nworkerz = 1\n")
    failed = subprocess.run([sys.executable, "-m", "shoal.broker", "--config", str(config), "--data",
                             str(tmp_path / "data"), "--log-format", "json"],
                            capture_output=True, text=True, timeout=60)
    assert failed.returncode == 2
    (record,) = [json.loads(line) for line in (failed.stdout + failed.stderr).splitlines()]
    assert record["level"] == "error" and 'did you mean "workers"' in record["msg"]


def test_json_log_format_reports_a_data_dir_in_use_as_json(cluster: Cluster) -> None:
    second = subprocess.run([sys.executable, "-m", "shoal.broker", "--config", str(cluster.config),
                             "--data", str(cluster.data), "--bind", "tcp://127.0.0.1:*", "--no-supervise",
                             "--log-format", "json"],
                            capture_output=True, text=True, timeout=60, env=cluster.env)
    assert second.returncode == 1
    records = [json.loads(line) for line in (second.stdout + second.stderr).splitlines()]
    assert any(r["level"] == "error" for r in records)


# --- the shoal command ---------------------------------------------------------------------
def test_job_into_a_closed_pipe_ends_without_a_traceback(cluster: Cluster) -> None:
    cluster.start_worker("email", 1)
    client = cluster.client()
    job_id = client.wait(client.enqueue("echo", {"x": "y" * 1000}, group="email"), timeout=20).id
    proc = subprocess.Popen([sys.executable, "-m", "shoal.cli", "job", job_id, "--broker", cluster.endpoint],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cluster.env)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # as `| head` does once it has read enough: every write now fails
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(30) == cli_ops.EXIT_SIGPIPE
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_health_names_workflows_nobody_serves(cluster: Cluster, capsys) -> None:
    client = cluster.client()
    client.enqueue("nobody-serves-this", {})
    client.enqueue("nobody-serves-this", {})
    code, out, _ = shoal(capsys, "health", "--broker", cluster.endpoint)
    assert code == 1
    assert "workflow nobody-serves-this has 2 unrouted jobs: no worker has announced it" in out


def test_status_header_says_failed_counts_attempts(cluster: Cluster, capsys) -> None:
    cluster.start_worker("email", 1)
    client = cluster.client()
    client.wait(client.enqueue("flaky", {"ok_on": 2}, group="email"), timeout=20)
    code, out, _ = shoal(capsys, "status", "--broker", cluster.endpoint)
    header = out.splitlines()[0]
    assert code == 0 and "FAILED ATTEMPTS" in header
    columns = re.split(r"\s{2,}", header.strip())
    assert re.split(r"\s{2,}", next(l for l in out.splitlines() if l.startswith("email")).strip())[
        columns.index("FAILED ATTEMPTS")] == "1"
