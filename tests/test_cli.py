"""The ``shoal`` command against a real broker and real workers.

Most tests call ``shoal.cli.main`` in-process (fast, output via capsys); the exit-code
tests that matter to shell scripts run ``python -m shoal.cli`` as a real subprocess.
"""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from shoal import cli, cli_format
from shoal.ids import id_to_str, new_job_id

from conftest import Cluster, wait_for

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The developer's SHOAL_BROKER / SHOAL_CONFIG / ./shoal.toml must not steer these tests."""
    monkeypatch.delenv("SHOAL_BROKER", raising=False)
    monkeypatch.delenv("SHOAL_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)


def shoal(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``shoal ARGV`` in-process; returns (exit code, stdout, stderr)."""
    capsys.readouterr()  # drop anything printed before
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def row(out: str, first_cell: str) -> list[str]:
    """The cells of the table row whose first cell is ``first_cell``."""
    for line in out.splitlines():
        cells = line.split()
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row for {first_cell!r} in:\n{out}")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- status and jobs ---------------------------------------------------------------
def test_status_shows_a_row_per_group_with_its_workers_and_free_slots(cluster: Cluster, capsys) -> None:
    cluster.start_worker("email", 3)
    code, out, _ = shoal(capsys, "status", "--broker", cluster.endpoint)
    assert code == 0
    header = out.splitlines()[0].split()
    assert header[:4] == ["GROUP", "STATE", "WORKERS", "FREE"]
    assert row(out, "email")[1:4] == ["warm", "1", "3"]


def test_status_names_unrouted_workflows_with_their_job_counts(cluster: Cluster, capsys) -> None:
    cluster.client().enqueue_many("nobody-serves-this", [1, 2])
    code, out, _ = shoal(capsys, "status", "--broker", cluster.endpoint)
    assert code == 0
    assert "unrouted" in out and "nobody-serves-this (2 jobs)" in out


def test_status_json_carries_the_stats_counters_and_unrouted(cluster: Cluster, capsys) -> None:
    cluster.start_worker("email", 2)
    cluster.client().enqueue("nobody-serves-this", {})
    code, out, _ = shoal(capsys, "status", "--json", "--broker", cluster.endpoint)
    assert code == 0
    body = json.loads(out)
    assert body["groups"]["email"]["workers"] == 1
    assert body["groups"]["email"]["free_slots"] == 2
    assert body["unrouted"] == {"nobody-serves-this": 1}


def test_jobs_lists_active_jobs_and_filters_by_state(cluster: Cluster, capsys) -> None:
    client = cluster.client()
    later = client.enqueue("echo", {}, group="email", delay=60)
    unrouted = client.enqueue("nobody-serves-this", {})
    code, out, _ = shoal(capsys, "jobs", "--broker", cluster.endpoint)
    assert code == 0
    assert row(out, later)[1:5] == ["echo", "email", "scheduled", "0"]
    assert row(out, unrouted)[1:4] == ["nobody-serves-this", "(unrouted)", "pending"]
    code, out, _ = shoal(capsys, "jobs", "--state", "scheduled", "--broker", cluster.endpoint)
    assert later in out and unrouted not in out


# --- enqueue -------------------------------------------------------------------------
def test_enqueue_with_wait_prints_the_id_then_the_result(cluster: Cluster, capsys) -> None:
    cluster.start_worker("email", 2)
    code, out, err = shoal(capsys, "enqueue", "echo", '{"to": "a@b.c", "n": [1, 2]}', "--wait",
                           "--broker", cluster.endpoint)
    assert code == 0, err
    job_id, result = out.splitlines()
    assert UUID.match(job_id)
    assert result.startswith("completed: ")
    assert json.loads(result.removeprefix("completed: "))["payload"] == {"to": "a@b.c", "n": [1, 2]}
    assert cluster.client().get(job_id).status == "completed"


def test_enqueue_without_wait_prints_only_the_id_of_the_stored_job(cluster: Cluster, capsys) -> None:
    code, out, _ = shoal(capsys, "enqueue", "echo", "[1, 2]", "--group", "email", "--delay", "30",
                         "--broker", cluster.endpoint)
    assert code == 0
    job = cluster.client().get(out.strip())
    assert job is not None and job.status == "scheduled" and job.group == "email"


def test_enqueue_bad_json_exits_2_naming_the_problem_and_sends_nothing(cluster: Cluster, capsys) -> None:
    code, out, err = shoal(capsys, "enqueue", "echo", "{'single': 'quotes'}", "--broker", cluster.endpoint)
    assert code == 2
    assert out == ""
    assert "not valid JSON" in err and "line 1 column 2" in err
    client = cluster.client()
    assert client.jobs() == [] and client.stats().unrouted == {}


# --- one job ---------------------------------------------------------------------------
def test_job_shows_status_workflow_group_attempts_times_and_value(cluster: Cluster, capsys) -> None:
    cluster.start_worker("email", 2)
    client = cluster.client()
    job_id = client.enqueue("echo", {"hello": "world"})
    wait_for(lambda: client.get(job_id).status == "completed", what="the echo job")
    code, out, _ = shoal(capsys, "job", job_id, "--broker", cluster.endpoint)
    assert code == 0
    fields = dict(line.split(":", 1) for line in out.splitlines())
    fields = {k: v.strip() for k, v in fields.items()}
    assert fields["id"] == job_id
    assert (fields["status"], fields["workflow"], fields["group"], fields["attempts"]) == \
        ("completed", "echo", "email", "1")
    for moment in ("created", "started", "finished"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC", fields[moment]), fields[moment]
    assert re.fullmatch(r"\d+ms|\d+\.\ds", fields["duration"])
    assert json.loads(fields["value"])["payload"] == {"hello": "world"}


def test_job_of_a_dead_job_shows_its_error_and_traceback(cluster: Cluster, capsys) -> None:
    cluster.start_worker("email", 2)
    client = cluster.client()
    job_id = client.enqueue("permanent", {})
    wait_for(lambda: client.get(job_id).status == "dead", what="the job to die")
    code, out, _ = shoal(capsys, "job", job_id, "--broker", cluster.endpoint)
    assert code == 0
    assert re.search(r"^status: +dead$", out, re.M)
    assert re.search(r"^error: +Permanent: this input can never work \(permanent\)$", out, re.M)
    assert "traceback:\n  Traceback (most recent call last):" in out


def test_job_with_an_unknown_id_exits_1_saying_so(cluster: Cluster, capsys) -> None:
    never = id_to_str(new_job_id())
    code, out, err = shoal(capsys, "job", never, "--broker", cluster.endpoint)
    assert code == 1
    assert out == ""
    assert f"no job with id {never}" in err


# --- dead letters and requeue ----------------------------------------------------------
def test_dead_then_requeue_all_runs_the_same_job_again(cluster: Cluster, capsys, tmp_path: Path) -> None:
    cluster.start_worker("email", 2)
    code, out, _ = shoal(capsys, "enqueue", "toggle", "{}", "--wait", "--broker", cluster.endpoint)
    job_id, result = out.splitlines()
    assert code == 1 and result == "dead after 1 attempt: RuntimeError: not yet"

    code, out, _ = shoal(capsys, "dead", "--broker", cluster.endpoint)
    assert code == 0
    assert row(out, job_id)[1:] == ["toggle", "email", "1", "RuntimeError:", "not", "yet"]

    (tmp_path / "toggle-ok").touch()
    code, out, _ = shoal(capsys, "requeue", "--all", "--broker", cluster.endpoint)
    assert (code, out) == (0, "requeued 1 job\n")
    client = cluster.client()
    done = wait_for(lambda: (r := client.get(job_id)) and r.status == "completed" and r, what="the requeued job")
    assert done.value == "ok" and done.attempts == 1
    code, out, _ = shoal(capsys, "dead", "--broker", cluster.endpoint)
    assert out == "no dead letters\n"


def test_requeue_of_a_job_that_is_not_dead_says_so_and_exits_1(cluster: Cluster, capsys) -> None:
    job_id = cluster.client().enqueue("echo", {}, group="email", delay=60)
    code, out, err = shoal(capsys, "requeue", job_id, "--broker", cluster.endpoint)
    assert code == 1 and out == ""
    assert f"job {job_id} was not requeued: it is scheduled, not dead" in err


def test_requeue_needs_exactly_one_of_an_id_or_all() -> None:
    assert cli.main(["requeue", "--broker", f"tcp://127.0.0.1:{closed_port()}"]) == 2


# --- endpoints, errors and the other commands ------------------------------------------
def test_unreachable_broker_exits_3_naming_the_endpoint() -> None:
    endpoint = f"tcp://127.0.0.1:{closed_port()}"
    proc = subprocess.run([sys.executable, "-m", "shoal.cli", "status", "--broker", endpoint, "--timeout", "0.5"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3
    assert proc.stdout == ""
    assert endpoint in proc.stderr and "no answer from the broker" in proc.stderr


def test_endpoint_comes_from_the_config_bind_when_no_flag_or_env(cluster: Cluster, capsys, tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text(f'[broker]\nbind = "{cluster.endpoint}"\n')
    code, out, _ = shoal(capsys, "status", "--config", str(config), "--timeout", "2")
    assert code == 0 and out.startswith("GROUP")


def test_endpoint_precedence_is_flag_then_env_then_config_bind(tmp_path: Path) -> None:
    config = tmp_path / "shoal.toml"
    config.write_text('[broker]\nbind = "tcp://*:7000"\n')
    assert cli.resolve_endpoint(None, None, env={}) == "tcp://127.0.0.1:7000"  # ./shoal.toml, wildcard made local
    assert cli.resolve_endpoint(None, None, env={"SHOAL_BROKER": "tcp://10.0.0.1:1"}) == "tcp://10.0.0.1:1"
    assert cli.resolve_endpoint("ipc:///tmp/b", str(config), env={}) == "ipc:///tmp/b"


def test_config_is_delegated_to_config_show(capsys, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[workflows.media]\nworkers = 2\n")
    code, out, _ = shoal(capsys, "config", "--show", "--json", "--config", str(config))
    assert code == 0
    assert json.loads(out)["groups"]["media"]["workers"] == {"value": 2, "source": "[workflows.media]"}


# --- formatting --------------------------------------------------------------------------
def test_durations_and_timestamps_read_as_people_expect() -> None:
    assert [cli_format.duration(s) for s in (0.35, 4.21, 192, 7500, 270000)] == \
        ["350ms", "4.2s", "3m12s", "2h05m", "3d03h"]
    assert cli_format.timestamp(0) == "-"
    assert cli_format.timestamp(1_700_000_000_123) == "2023-11-14 22:13:20.123 UTC"
