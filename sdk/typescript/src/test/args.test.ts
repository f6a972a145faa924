import { test } from "node:test";
import assert from "node:assert/strict";
import { parseArgs, UsageError } from "../args.js";

test("flags, with defaults and the environment", () => {
  const o = parseArgs(["--group", "media", "--app", "./wf.js", "--connect", "tcp://127.0.0.1:6000", "--concurrency", "8"]);
  assert.deepEqual([o.group, o.app, o.connect, o.concurrency, o.graceS, o.heartbeatS], ["media", "./wf.js", "tcp://127.0.0.1:6000", 8, 30, 1]);
  const e = parseArgs(["--app=wf.mjs"], { SHOAL_BROKER: "ipc:///tmp/b", SHOAL_GROUP: "g", SHOAL_GRACE: "2.5", SHOAL_HEARTBEAT_INTERVAL: "0.2" });
  assert.deepEqual([e.group, e.connect, e.graceS, e.heartbeatS], ["g", "ipc:///tmp/b", 2.5, 0.2]);
  assert.equal(parseArgs(["--app", "a.js", "--group", "x"], { SHOAL_GROUP: "env" }).group, "x", "a flag beats the environment");
  assert.equal(parseArgs(["--app", "a.js", "--connect", "tcp://[::1]:6000"]).connect, "tcp://[::1]:6000", "an IPv6 address");
});

test("bad command lines name the flag", () => {
  assert.throws(() => parseArgs([]), /--app FILE is required/);
  assert.throws(() => parseArgs(["--app", "a.js", "--concurrency", "0"]), /--concurrency must be an integer/);
  assert.throws(() => parseArgs(["--app", "a.js", "--concurrency", "2.5"]), /--concurrency/);
  assert.throws(() => parseArgs(["--app", "a.js", "--grace", "soon"]), /--grace must be a duration/);
  assert.throws(() => parseArgs(["--app", "a.js"], { SHOAL_HEARTBEAT_INTERVAL: "0" }), /SHOAL_HEARTBEAT_INTERVAL must be a duration/);
  assert.throws(() => parseArgs(["--app", "a.js", "--connect", "localhost:5555"]), /--connect must be an endpoint/);
  assert.throws(() => parseArgs(["--app", "a.js", "--connect", "tcp://::1:5555"]), /--connect must be an endpoint/, "IPv6 needs brackets");
  assert.throws(() => parseArgs(["--app"]), /--app needs a value/);
  assert.throws(() => parseArgs(["--app", "a.js", "--colour", "red"]), /unknown flag --colour/);
  assert.throws(() => parseArgs(["a.js"]), UsageError);
  assert.equal(parseArgs(["--help"]).help, true);
});

test("CURVE key files: a flag beats SHOAL_KEY / SHOAL_BROKER_KEY, each remembers where it came from", () => {
  const o = parseArgs(["--app", "a.js", "--key", "w.key_secret", "--broker-key", "b.key"], { SHOAL_KEY: "env" });
  assert.deepEqual(o.keys, { key: { path: "w.key_secret", origin: "--key" }, brokerKey: { path: "b.key", origin: "--broker-key" } });
  const e = parseArgs(["--app", "a.js"], { SHOAL_KEY: "k", SHOAL_BROKER_KEY: "bk" });
  assert.deepEqual(e.keys, { key: { path: "k", origin: "SHOAL_KEY" }, brokerKey: { path: "bk", origin: "SHOAL_BROKER_KEY" } });
  assert.deepEqual(parseArgs(["--app", "a.js"]).keys, { key: undefined, brokerKey: undefined });
});
