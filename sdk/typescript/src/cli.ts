#!/usr/bin/env node
/** `shoal-worker`: load the app file, serve its group's workflows, drain on SIGTERM. */
import { existsSync } from "node:fs";
import { getPriority, setPriority } from "node:os";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs, UsageError, USAGE } from "./args.js";
import { ConfigError } from "./config.js";
import { curveKeys, KeyError } from "./keys.js";
import { allWorkflows, workflowsOf } from "./registry.js";
import { Worker } from "./worker.js";

async function main(): Promise<number> {
  let options;
  try {
    options = parseArgs(process.argv.slice(2), process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`shoal-worker: ${err.message}\n`);
      return 2;
    }
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`shoal-worker: ${err.message}\n${USAGE}\n`);
    return 2;
  }
  if (options.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  for (const warning of options.warnings) process.stderr.write(`shoal-worker: warning: ${warning}\n`);
  let curve;
  try {
    curve = curveKeys(options.keys);
  } catch (err) {
    if (!(err instanceof KeyError)) throw err;
    process.stderr.write(`shoal-worker: ${err.message}\n`);
    return 2;
  }
  const file = resolve(options.app);
  if (!existsSync(file)) {
    process.stderr.write(`shoal-worker: --app ${options.app}: no such file (looked at ${file})\n`);
    return 2;
  }
  try {
    await import(pathToFileURL(file).href); // an ES module or CommonJS: defineWorkflow registers as it runs
  } catch (err) {
    process.stderr.write(`shoal-worker: loading --app ${options.app} failed: ${(err as Error).stack ?? String(err)}\n`);
    return 2;
  }
  const workflows = workflowsOf(options.group);
  if (workflows.size === 0) {
    const groups = new Map<string, string[]>();
    for (const wf of allWorkflows().values()) groups.set(wf.group, [...(groups.get(wf.group) ?? []), wf.name]);
    const found = [...groups].map(([g, names]) => `${g}: ${names.join(", ")}`).join("; ") || "none";
    process.stderr.write(`shoal-worker: no workflow in --app ${options.app} is for group ${JSON.stringify(options.group)} ` +
      `(found ${found}); start the worker with --group set to one of those groups, or pass worker: ${JSON.stringify(options.group)} to defineWorkflow\n`);
    return 2;
  }
  applyNice(options.nice);
  const worker = new Worker({
    endpoint: options.connect, group: options.group, concurrency: options.concurrency, workflows,
    server: options.server, graceS: options.graceS, heartbeatS: options.heartbeatS, curve,
    timeoutS: options.timeoutS, maxJobs: options.maxJobs, maxMemoryMb: options.maxMemoryMb, maxStepBytes: options.maxStepBytes,
  });
  let signals = 0;
  const onSignal = () => {
    // the first SIGTERM or Ctrl-C drains; a second one leaves now (the broker redelivers)
    signals += 1;
    if (signals > 1) process.exit(1);
    worker.drain();
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
  const code = await worker.run();
  if (worker.refused) process.stderr.write(`shoal-worker: the broker refused this worker: ${worker.refused}\n`);
  return code;
}

/** Take the group's `nice` (only ever lowering this process's priority, as the Python worker does). */
function applyNice(nice: number): void {
  try {
    if (nice > getPriority()) setPriority(nice);
  } catch (err) {
    process.stderr.write(`shoal-worker: warning: cannot set nice ${nice}: ${(err as Error).message}\n`);
  }
}

main().then(
  (code) => process.exit(code), // handlers still running after a hand-back are abandoned
  (err) => {
    process.stderr.write(`shoal-worker: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
