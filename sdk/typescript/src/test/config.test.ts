import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "../args.js";
import { ConfigError, readConfig } from "../config.js";
import { parseDuration, parseSize } from "../durations.js";

function dir(files: Record<string, string> = {}): string {
  const d = mkdtempSync(join(tmpdir(), "shoal-ts-config-"));
  for (const [name, text] of Object.entries(files)) writeFileSync(join(d, name), text);
  return d;
}

const LAYERED = `
[broker]
bind = "tcp://*:6100"
heartbeat_interval = "200ms"
max_step_bytes = "2MiB"

[workflows]
concurrency = 3
grace = "5s"
timeout = "1m"

[workflows.media]
concurrency = 6
max_jobs = 100
max_memory = "1.5GiB"
nice = 5

[servers.gpu1.workflows]
grace = "2s"

[servers.gpu1.workflows.media]
concurrency = 12
`;

test("durations and sizes read as conf/durations.py reads them", () => {
  assert.deepEqual(["200ms", "1s", "1.5s", "5m", "1h", "1d", 3, "7", ".5s"].map(parseDuration), [0.2, 1, 1.5, 300, 3600, 86400, 3, 7, 0.5]);
  for (const bad of ["5 minutes", "-1s", "", true, "1w"]) assert.throws(() => parseDuration(bad), /expected a duration like/);
  assert.deepEqual(["16MiB", "1GB", "1.5KiB", 512].map((v) => parseSize(v)), [16 * 2 ** 20, 1e9, 1536, 512]);
  assert.equal(parseSize(3, 2 ** 20), 3 * 2 ** 20, "a bare number counts the caller's unit (MiB for max_memory)");
  assert.throws(() => parseSize("lots"), /expected a size/);
});

test("group keys inherit [workflows] -> [workflows.<group>] -> [servers.<name>.workflows] -> [servers.<name>.workflows.<group>]", () => {
  const d = dir({ "shoal.toml": LAYERED });
  const media = readConfig("shoal.toml", "media", "gpu1", d);
  assert.deepEqual([media.concurrency, media.graceS, media.timeoutS, media.maxJobs, media.maxMemoryMb, media.nice], [12, 2, 60, 100, 1536, 5]);
  assert.deepEqual([media.bind, media.heartbeatS, media.maxStepBytes], ["tcp://127.0.0.1:6100", 0.2, 2 * 2 ** 20],
    "a wildcard bind is reached on loopback");
  const elsewhere = readConfig("shoal.toml", "media", "web1", d);
  assert.deepEqual([elsewhere.concurrency, elsewhere.graceS], [6, 5], "another server's blocks do not apply");
  const other = readConfig("shoal.toml", "email", "web1", d);
  assert.deepEqual([other.concurrency, other.maxJobs], [3, undefined], "a group named nowhere gets [workflows]");
});

test("precedence: flag, then environment, then shoal.toml, then the default", () => {
  const d = dir({ "shoal.toml": LAYERED });
  const fromFile = parseArgs(["--app", "a.js", "--group", "media"], {}, d, "gpu1");
  assert.equal(fromFile.config, join(d, "shoal.toml"), "./shoal.toml is read when present");
  assert.deepEqual([fromFile.connect, fromFile.concurrency, fromFile.graceS, fromFile.heartbeatS, fromFile.timeoutS, fromFile.maxJobs],
    ["tcp://127.0.0.1:6100", 12, 2, 0.2, 60, 100]);
  const env = { SHOAL_BROKER: "tcp://127.0.0.1:7000", SHOAL_GRACE: "9", SHOAL_HEARTBEAT_INTERVAL: "0.5", SHOAL_SERVER: "web1" };
  const fromEnv = parseArgs(["--app", "a.js", "--group", "media"], env, d, "gpu1");
  assert.deepEqual([fromEnv.connect, fromEnv.graceS, fromEnv.heartbeatS, fromEnv.concurrency, fromEnv.server], ["tcp://127.0.0.1:7000", 9, 0.5, 6, "web1"]);
  const fromFlags = parseArgs(["--app", "a.js", "--group", "media", "--connect", "ipc:///tmp/x", "--grace", "1s",
    "--heartbeat-interval", "100ms", "--concurrency", "2", "--server", "gpu1"], env, d);
  assert.deepEqual([fromFlags.connect, fromFlags.graceS, fromFlags.heartbeatS, fromFlags.concurrency], ["ipc:///tmp/x", 1, 0.1, 2]);
  const none = parseArgs(["--app", "a.js"], {}, dir(), "h");
  assert.deepEqual([none.config, none.connect, none.concurrency, none.graceS, none.heartbeatS, none.server],
    [null, "tcp://127.0.0.1:5555", 10, 30, 1, "h"]);
});

test("--config and SHOAL_CONFIG name the file; a named file that is missing is an error", () => {
  const d = dir({ "a.toml": "[broker]\nbind = \"tcp://127.0.0.1:6200\"\n", "b.toml": "[broker]\nbind = \"tcp://127.0.0.1:6300\"\n" });
  assert.equal(parseArgs(["--app", "x.js", "--config", "a.toml"], { SHOAL_CONFIG: "b.toml" }, d).connect, "tcp://127.0.0.1:6200");
  assert.equal(parseArgs(["--app", "x.js"], { SHOAL_CONFIG: "b.toml" }, d).connect, "tcp://127.0.0.1:6300");
  assert.throws(() => parseArgs(["--app", "x.js", "--config", "nope.toml"], {}, d), /nope.toml: config file not found \(named by --config\)/);
  assert.throws(() => parseArgs(["--app", "x.js"], { SHOAL_CONFIG: "gone.toml" }, d), /gone.toml: config file not found \(named by SHOAL_CONFIG\)/);
});

test("a bad value names the file, line and key; every problem is listed", () => {
  const d = dir({ "shoal.toml": '[broker]\nheartbeat_interval = "soon"\n\n[workflows.media]\nconcurrency = 0\n\n[servers.x.workflows]\ntimeout = -1\nnice = 20\nmax_memory = "lots"\n' });
  const err = (() => { try { readConfig("shoal.toml", "media", "h", d); } catch (e) { return e; } })();
  assert.ok(err instanceof ConfigError);
  assert.deepEqual(err.message.split("\n"), [
    'shoal.toml:2: broker.heartbeat_interval: expected a duration like "60s", "5m", "1h" or seconds, found "soon"',
    "shoal.toml:5: workflows.media.concurrency: expected an integer >= 1, found 0",
    "shoal.toml:8: servers.x.workflows.timeout: expected a duration >= 0, found -1",
    "shoal.toml:9: servers.x.workflows.nice: expected an integer from -20 to 19, found 20",
    'shoal.toml:10: servers.x.workflows.max_memory: expected a size like "512MiB", "1GB" or a whole number of MiB, found "lots"',
  ]);
  const broken = dir({ "shoal.toml": "[broker]\nbind = \n" });
  assert.throws(() => readConfig("shoal.toml", "g", "h", broken), /^ConfigError: shoal.toml:2: invalid TOML/);
});

test("keys this worker does not read are left to the broker; unknown ones are warnings", () => {
  const d = dir({ "shoal.toml": '[broker]\nmin_free_disk = "1GiB"\ncolour = "red"\n\n[workflows]\nlease = "4s"\nconcurency = 4\n\n[cron.x]\nworkflow = "w"\n' });
  const read = readConfig("shoal.toml", "default", "h", d);
  assert.deepEqual(read.warnings.map((w) => w.split(";")[0]), ["shoal.toml:3: broker.colour: unknown key", "shoal.toml:7: workflows.concurency: unknown key"]);
  assert.equal(read.concurrency, undefined);
});
