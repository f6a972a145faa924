"""The TypeScript package (sdk/typescript): its own node tests, a group served by a Python and a
TypeScript worker at once, and a Node app that enqueues for a Python worker. The package is
installed and compiled by the fixture when needed; a missing node is a failure, never a skip."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `tests.conformance` from any cwd

from tests.conformance import IMPLEMENTATIONS, TS_SDK  # noqa: E402
from tests.conformance.harness import Harness, wait_for  # noqa: E402
from tests.conformance.node import ensure_built, tools  # noqa: E402
from tests.conftest import Proc, needs_ipv6  # noqa: E402


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, with the package installed and compiled."""
    ensure_built()
    return tools()[0]


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    h = Harness(tmp_path, IMPLEMENTATIONS["python"])
    h.start_broker()
    yield h  # type: ignore[misc]
    h.close()


def start_ts_worker(harness: Harness, node: str, tmp_path: Path, *args: str, **env: str) -> Proc:
    """The TypeScript CLI with ``args``, in ``tmp_path``, given only ``env`` of the SHOAL_ variables."""
    clean = {k: v for k, v in harness.env.items() if not k.startswith("SHOAL_")}
    proc = Proc([node, str(TS_SDK / "dist" / "cli.js"), *args], tmp_path / "ts-worker.log", {**clean, **env}, tmp_path)
    harness.procs.append(proc)
    return proc


def test_the_packages_own_node_tests_pass(node: str) -> None:
    done = subprocess.run([tools()[1], "test"], cwd=TS_SDK, capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    passed = re.search(r"^# pass (\d+)$", out, re.M)
    assert passed and int(passed.group(1)) >= 10 and re.search(r"^# fail 0$", out, re.M), out


def test_one_group_served_by_a_python_and_a_typescript_worker(node: str, harness: Harness) -> None:
    harness.start_worker(concurrency=2)
    harness.worker_cmd = IMPLEMENTATIONS["typescript"]
    harness.start_worker(concurrency=2)
    ids = harness.client.enqueue_many("conf-echo", [{"n": i} for i in range(20)])
    results = [harness.client.wait(i, timeout=60) for i in ids]
    assert all(r.status == "completed" for r in results), results
    assert sorted(r.value["echo"]["n"] for r in results) == list(range(20))
    impls = {r.value["impl"] for r in results}
    assert impls == {"python", "typescript"}, f"jobs should finish on both workers, finished on {impls}"


@needs_ipv6
def test_a_typescript_worker_reaches_a_broker_on_ipv6_loopback(node: str, tmp_path: Path) -> None:
    h = Harness(tmp_path, IMPLEMENTATIONS["typescript"])
    h.endpoint = "tcp://[::1]:*"
    try:
        h.start_broker()
        assert h.endpoint.startswith("tcp://[::1]:"), h.endpoint
        h.start_worker(concurrency=2)
        results = [h.client.wait(i, timeout=60) for i in h.client.enqueue_many("conf-echo", [{"n": i} for i in range(5)])]
        assert [(r.status, r.value["impl"]) for r in results] == [("completed", "typescript")] * 5, results
    finally:
        h.close()


def test_a_node_app_enqueues_and_a_python_worker_runs_it(node: str, harness: Harness, tmp_path: Path) -> None:
    harness.start_worker(concurrency=1)
    script = tmp_path / "enqueue.mjs"
    script.write_text(f"""
import {{ Client }} from {json.dumps((TS_SDK / "dist" / "index.js").as_uri())};
const client = new Client(process.argv[2]);
const id = await client.enqueue("conf-echo", {{ from: "node", big: 2 ** 40 }});
const result = await client.wait(id, 30);
const missing = await client.get("00000000-0000-7000-8000-000000000000");
const ran = await client.run("conf-echo", {{ from: "run" }}, {{}}, 30);
console.log(JSON.stringify({{ id, status: result.status, value: result.value, missing, ran }}));
client.close();
""")
    done = subprocess.run([node, str(script), harness.endpoint], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["status"] == "completed" and out["missing"] is None, out
    assert out["value"] == {"echo": {"from": "node", "big": 2 ** 40}, "impl": "python"}, out
    ran = out["ran"]  # run: the ENQUEUE and its WAIT sent together
    assert ran["status"] == "completed" and ran["value"] == {"echo": {"from": "run"}, "impl": "python"}, out
    assert ran["id"] != out["id"] and harness.client.get(ran["id"]).status == "completed"
    seen = harness.client.get(out["id"])
    assert seen is not None and seen.status == "completed" and seen.attempts == 1, seen


def test_the_cli_refuses_a_bad_command_line_and_a_group_with_no_workflows(node: str, tmp_path: Path) -> None:
    cli = str(TS_SDK / "dist" / "cli.js")
    bad = subprocess.run([node, cli, "--app", "x.js", "--concurrency", "0"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--concurrency must be an integer" in bad.stderr, bad.stderr
    app = tmp_path / "wf.cjs"  # a CommonJS file: loaded with import() like an ES module
    app.write_text(f"const {{ defineWorkflow }} = require({json.dumps(str(TS_SDK / 'dist' / 'index.js'))});\n"
                   "defineWorkflow('hidden', { worker: 'media', handler: async () => 1 });\n")
    wrong = subprocess.run([node, cli, "--app", str(app), "--group", "email"], capture_output=True, text=True, timeout=30)
    assert wrong.returncode == 2, wrong.stderr
    assert 'no workflow in --app' in wrong.stderr and "media: hidden" in wrong.stderr, wrong.stderr
    missing = subprocess.run([node, cli, "--app", str(tmp_path / "nope.js")], capture_output=True, text=True, timeout=30)
    assert missing.returncode == 2 and "no such file" in missing.stderr, missing.stderr


def test_a_hello_the_broker_refuses_ends_the_worker_with_the_reason(node: str, harness: Harness, tmp_path: Path) -> None:
    harness.start_worker()  # the Python worker claims conf-echo for group conf
    app = tmp_path / "claims.mjs"
    app.write_text(f"import {{ defineWorkflow }} from {json.dumps((TS_SDK / 'dist' / 'index.js').as_uri())};\n"
                   "defineWorkflow('conf-echo', { worker: 'other', handler: async () => 1 });\n")
    done = subprocess.run([node, str(TS_SDK / "dist" / "cli.js"), "--app", str(app), "--group", "other",
                           "--connect", harness.endpoint], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "the broker refused this worker" in done.stderr and "claimed by group 'conf'" in done.stderr, done.stderr


def test_child_job_ids_are_the_same_in_both_languages(node: str, tmp_path: Path) -> None:
    """A job that moves between a Python and a TypeScript worker before its enqueue step is stored
    re-sends the same children's ids, so the broker creates no second set."""
    from shoal.worker.steps import child_job_id

    cases = [(os.urandom(16), name, index) for name, index in
             [("children", 0), ("children", 1), ("fan-out ✓ é", 7), ("", 0), ("n" * 1100, 2 ** 32 - 1)]]
    script = tmp_path / "ids.mjs"
    script.write_text(f"""
import {{ childJobId }} from {json.dumps((TS_SDK / "dist" / "protocol.js").as_uri())};
for (const [parent, name, index] of JSON.parse(process.argv[2])) {{
  console.log(Buffer.from(childJobId(Buffer.from(parent, "hex"), name, index)).toString("hex"));
}}
""")
    given = json.dumps([[parent.hex(), name, index] for parent, name, index in cases])
    done = subprocess.run([node, str(script), given], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [child_job_id(*case).hex() for case in cases]


def test_a_worker_given_only_config_and_group_joins_the_broker_the_config_names(
        node: str, harness: Harness, tmp_path: Path) -> None:
    """--config FILE and --group: the endpoint (`[broker] bind`), heartbeat interval and the group's
    concurrency (`[servers.<name>.workflows.<group>]` over `[workflows.<group>]`) come from the file."""
    config = tmp_path / "worker.toml"
    config.write_text(f'[broker]\nbind = "{harness.endpoint}"\nheartbeat_interval = "200ms"\n\n'
                      '[workflows.conf]\nconcurrency = 2\n\n[servers.box7.workflows.conf]\nconcurrency = 3\n')
    proc = start_ts_worker(harness, node, tmp_path, "--app", str(TS_SDK / "conformance" / "app.mjs"),
                           "--config", str(config), "--group", "conf", SHOAL_SERVER="box7")
    entry = harness.wait_joined(proc)
    assert entry["slots"] == 3 and entry["server"] == "box7", entry
    result = harness.client.wait(harness.client.enqueue("conf-echo", {"via": "config"}), timeout=30)
    assert result.status == "completed" and result.value["impl"] == "typescript", result


def test_a_bad_config_value_stops_the_worker_naming_file_line_and_key(node: str, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[workflows]\nretries = 2\n\n[workflows.conf]\nconcurrency = "many"\n')
    done = subprocess.run([node, str(TS_SDK / "dist" / "cli.js"), "--app", str(TS_SDK / "conformance" / "app.mjs"),
                           "--config", str(config), "--group", "conf"], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert f'{config}:5: workflows.conf.concurrency: expected an integer >= 1, found "many"' in done.stderr, done.stderr


def test_the_typescript_worker_knows_every_key_shoal_toml_has(node: str) -> None:
    """Its list of known keys (an unknown one is a warning) stays the Python config's list."""
    from shoal.conf.checks import BROKER_KEYS, GROUP_KEYS, SECURITY_KEYS
    from shoal.conf.tables import TOP_LEVEL_TABLES

    done = subprocess.run([node, "--input-type=module", "-e",
                           f"import * as c from {json.dumps((TS_SDK / 'dist' / 'config.js').as_uri())};"
                           "console.log(JSON.stringify([c.KNOWN_BROKER_KEYS, c.KNOWN_GROUP_KEYS, c.KNOWN_SECURITY_KEYS, c.TOP_LEVEL_TABLES]))"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    broker, group, security, tables = json.loads(done.stdout)
    assert (sorted(broker), sorted(group), sorted(security), sorted(tables)) == (
        sorted(BROKER_KEYS), sorted(GROUP_KEYS), sorted(SECURITY_KEYS), sorted(TOP_LEVEL_TABLES))


def test_a_handler_that_ignores_its_timeout_gets_its_worker_replaced(node: str, harness: Harness, tmp_path: Path) -> None:
    """The timed-out run is reported at once; a promise cannot be killed, so a handler still running
    5 s later makes the worker drain and exit 0 for a fresh process (as Python does for sync ones)."""
    app = tmp_path / "stubborn.mjs"
    app.write_text(f"import {{ defineWorkflow }} from {json.dumps((TS_SDK / 'dist' / 'index.js').as_uri())};\n"
                   "defineWorkflow('stubborn', { worker: 'stub', retries: 0, timeout: 0.5,\n"
                   "  handler: () => new Promise((resolve) => setTimeout(resolve, 60000)) });\n")
    proc = start_ts_worker(harness, node, tmp_path, "--app", str(app), "--group", "stub", "--connect", harness.endpoint,
                           SHOAL_CONFIG=str(harness.config))
    wait_for(lambda: any(w.get("pid") == proc.pid for w in harness.client.workers("stub")), 30, "the worker to join")
    result = harness.client.wait(harness.client.enqueue("stubborn", {}), timeout=30)
    assert result.status == "dead" and result.error_kind == "timeout" and "timed out after 0.5s" in (result.error or ""), result
    assert proc.wait(30) == 0, proc.output()
    assert "ignored its timeout for 5s" in proc.output(), proc.output()


def test_the_groups_nice_and_max_memory_from_the_config_apply(node: str, harness: Harness, tmp_path: Path) -> None:
    """`nice` lowers the worker's priority at start; past `max_memory` resident (1 MiB: at once) the
    worker recycles after its first job: drain and exit 0."""
    config = tmp_path / "worker.toml"
    config.write_text(f'[broker]\nbind = "{harness.endpoint}"\nheartbeat_interval = "200ms"\n\n'
                      '[workflows.conf]\nnice = 7\nmax_memory = 1\n')
    proc = start_ts_worker(harness, node, tmp_path, "--app", str(TS_SDK / "conformance" / "app.mjs"),
                           "--config", str(config), "--group", "conf")
    harness.wait_joined(proc)
    assert os.getpriority(os.PRIO_PROCESS, proc.pid) == max(7, os.getpriority(os.PRIO_PROCESS, 0))
    result = harness.client.wait(harness.client.enqueue("conf-echo", {"n": 1}), timeout=30)
    assert result.status == "completed", result
    assert proc.wait(30) == 0, proc.output()
    assert "(max_memory 1 MiB)" in proc.output(), proc.output()
