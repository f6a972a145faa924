/** @shoal/worker: Shoal workflows and workers in TypeScript, and a small client. */
export { defineWorkflow, Permanent, allWorkflows, workflowsOf, type Workflow, type WorkflowOptions, type Handler } from "./registry.js";
export { Step, StepError, ChildFailed, StepTimeout, TimedOut, RemoteError, type RunOptions } from "./step.js";
export { ConfigError } from "./config.js";
export { Worker, type WorkerOptions } from "./worker.js";
export { Client, BrokerUnreachable, clientCurve, type ClientKeys, type EnqueueOptions, type JobResult } from "./client.js";
export { idToStr, idFromStr, newJobId, packValue, unpackValue, VERSION } from "./protocol.js";
export type { CurveKeys } from "./link.js";
export { loadCurveKeys, curveKeys, keyPaths, KeyError, type KeyPaths, type KeySource } from "./keys.js";

import { workflowsOf } from "./registry.js";
import { Worker, type WorkerOptions } from "./worker.js";

/** Run a worker in this process for `options.group`'s workflows defined so far; resolves with its exit code. */
export function runWorker(options: Omit<WorkerOptions, "workflows"> & { workflows?: WorkerOptions["workflows"] }): Promise<number> {
  const worker = new Worker({ ...options, workflows: options.workflows ?? workflowsOf(options.group) });
  return worker.run();
}
