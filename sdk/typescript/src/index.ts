/** @shoal/worker: Shoal workflows and workers in TypeScript, and a small client. */
export { defineWorkflow, Permanent, allWorkflows, workflowsOf, type Workflow, type WorkflowOptions, type Handler } from "./registry.js";
export { Step, StepError, ChildFailed, StepTimeout, TimedOut, RemoteError, type RunOptions } from "./step.js";
export { ConfigError } from "./config.js";
export { Worker, type WorkerOptions } from "./worker.js";
export { Client, BrokerUnreachable, type EnqueueOptions, type JobResult } from "./client.js";
export { idToStr, idFromStr, newJobId, packValue, unpackValue, VERSION } from "./protocol.js";
export type { CurveKeys } from "./link.js";
export { loadCurveKeys, curveKeys, keyPaths, resolveCurve, KeyError, type KeyOptions, type KeyPaths, type KeySource } from "./keys.js";

import { resolveCurve, type KeyOptions } from "./keys.js";
import { workflowsOf } from "./registry.js";
import { Worker, type WorkerOptions } from "./worker.js";

/**
 * Run a worker in this process for `options.group`'s workflows defined so far; resolves with its exit code.
 * CURVE: `curve` (keys already loaded), else `keys` (files: see KeyOptions), else SHOAL_KEY /
 * SHOAL_BROKER_KEY, else `[security]` of shoal.toml, as the Python worker; throws KeyError for a bad file.
 */
export function runWorker(options: Omit<WorkerOptions, "workflows"> & { workflows?: WorkerOptions["workflows"]; keys?: KeyOptions }): Promise<number> {
  const curve = options.curve ?? resolveCurve(options.keys);
  const worker = new Worker({ ...options, curve, workflows: options.workflows ?? workflowsOf(options.group) });
  return worker.run();
}
