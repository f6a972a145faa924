"""The `worker` command as a new user meets it (issue 15): where --app is found, what it says, signals."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import Cluster, Proc, wait_for

WORKER = str(Path(sys.executable).parent / "worker")  # the console script, not `python -m`

CWD_APP = '''
from shoal import workflow

@workflow("hello-cwd", worker="cwd")
def hello(payload):
    return "hello " + payload
'''


def test_app_module_in_the_current_directory_is_found_without_pythonpath(cluster: Cluster, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "myapp.py").write_text(CWD_APP)
    env = {k: v for k, v in cluster.env.items() if k != "PYTHONPATH"}
    proc = Proc([WORKER, "--group", "cwd", "--app", "myapp", "--connect", cluster.endpoint],
                tmp_path / "worker-cwd.log", env, project)
    cluster.procs.append(proc)
    wait_for(lambda: f":{proc.pid} joined group cwd" in cluster.broker_output() or
             (not proc.alive() and proc.output()), what="the worker to join")
    assert proc.alive(), proc.output()
    client = cluster.client()
    result = client.wait(client.enqueue("hello-cwd", "there", group="cwd"), timeout=20)
    assert result.value == "hello there"


def test_a_group_with_no_workflow_in_the_app_is_refused_with_what_was_found(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent / "apps")}
    env.pop("SHOAL_CONFIG", None)
    done = subprocess.run([WORKER, "--group", "emial", "--app", "testapp", "--connect", "tcp://127.0.0.1:9"],
                          capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert "no workflow in --app testapp is for group 'emial'" in done.stderr
    assert "email: " in done.stderr and "media: " in done.stderr  # what the app does hold, per group
    assert "Traceback" not in done.stderr


def test_the_worker_says_what_it_serves_and_logs_each_job(cluster: Cluster) -> None:
    worker = cluster.start_worker("email", 2)
    client = cluster.client()
    assert client.wait(client.enqueue("echo", {"n": 1}), timeout=20).status == "completed"
    assert client.wait(client.enqueue("always-fails", {}), timeout=20).status == "dead"
    out = wait_for(lambda: (o := worker.output()).count("failed in") == 2 and o, what="the failure lines")
    assert "serving group 'email' in testapp: always-fails, async-echo" in out
    assert "found group 'media' in testapp: block, " in out
    assert "(echo) received, attempt 1" in out and "(echo) succeeded in " in out
    assert "(always-fails) received, attempt 2" in out and "RuntimeError: always" in out


def test_after_a_broker_restart_the_worker_says_it_rejoined(cluster: Cluster) -> None:
    worker = cluster.start_worker("email", 2)
    cluster.broker.kill()
    wait_for(lambda: "is silent; reconnecting" in worker.output(), what="the worker to notice")
    cluster.start_broker()
    wait_for(lambda: "rejoined the broker" in worker.output().rsplit("reconnecting in", 1)[1],
             what="a rejoined line after the last reconnecting line")
    client = cluster.client()
    assert client.wait(client.enqueue("echo", {}), timeout=20).status == "completed"


def test_a_second_sigterm_exits_at_once_and_the_job_is_run_again(cluster: Cluster, tmp_path: Path) -> None:
    first = cluster.start_worker("media", 1)
    client = cluster.client()
    job_id = client.enqueue("block", {"i": 1, "release": "go"})
    wait_for(lambda: (tmp_path / "block.log").exists(), what="the job to start")
    first.signal(signal.SIGTERM)
    wait_for(lambda: "a second SIGTERM or Ctrl-C exits at once" in first.output(), what="the drain message")
    assert first.alive()  # the first SIGTERM drains: the job is still running
    first.signal(signal.SIGTERM)
    assert first.wait(10) == 1
    cluster.start_worker("media", 1)
    (tmp_path / "go").touch()
    assert client.wait(job_id, timeout=30).status == "completed"


def test_an_embedded_worker_connects_to_a_wildcard_bind_on_this_machine(tmp_path: Path) -> None:
    """`[broker] bind = "tcp://*:PORT"` is where the broker listens; a worker built from that config
    connects to this machine's loopback, as `Client()` and `shoal` do, not to the wildcard."""
    from shoal.errors import ConfigError
    from shoal.worker.embed import build_worker

    config = tmp_path / "shoal.toml"
    config.write_text('[broker]\nbind = "tcp://*:5601"\n')
    worker = build_worker(group="email", app="testapp", config=str(config), env={})
    try:
        assert worker.options.endpoint == "tcp://127.0.0.1:5601"
    finally:
        worker.close()
    try:
        build_worker(group="email", app="testapp", config=str(config), env={"SHOAL_BROKER": "localhost:5601"})
    except ConfigError as exc:  # InvalidEndpoint is one too
        assert "localhost:5601" in str(exc)
    else:
        raise AssertionError("a malformed SHOAL_BROKER was accepted")
