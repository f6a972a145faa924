/**
 * `defineWorkflow`: every call registers the workflow in a process-wide registry while the
 * app file loads, exported or not (as Python's `@workflow` does). The registry lives on
 * `globalThis`, so an app that resolves its own copy of this package still lands in the
 * one the CLI serves.
 */
import type { Step } from "./step.js";

/** A workflow handler: gets the decoded payload and the durable-step API. */
export type Handler<P, R> = (payload: P, step: Step) => Promise<R> | R;

export interface WorkflowOptions<P, R> {
  /** The worker group that runs it (Python's `worker=`); default "default". */
  worker?: string;
  /** Retries after the first attempt (default: the group's setting on the broker). */
  retries?: number;
  /** Seconds a run may take (0: no limit; default: the group's `timeout` setting); past it the
   * run fails with kind `timeout`, `step.signal` aborts and step calls throw. */
  timeout?: number;
  handler: Handler<P, R>;
}

/** A registered workflow. */
export interface Workflow<P = unknown, R = unknown> {
  readonly name: string;
  readonly group: string;
  readonly retries: number | undefined;
  readonly timeout: number | undefined;
  readonly handler: Handler<P, R>;
}

export const DEFAULT_GROUP = "default";
const MAX_NAME = 1024;
const KEY = Symbol.for("shoal.worker.workflows");

type Registry = Map<string, Workflow>;

function registry(): Registry {
  const holder = globalThis as unknown as Record<symbol, Registry | undefined>;
  let found = holder[KEY];
  if (found === undefined) {
    found = new Map();
    holder[KEY] = found;
  }
  return found;
}

/** Declare a workflow: `defineWorkflow<{key: string}>("process-image", { worker: "media", handler })`. */
export function defineWorkflow<P = unknown, R = unknown>(name: string, options: WorkflowOptions<P, R>): Workflow<P, R> {
  if (typeof name !== "string" || name.length === 0 || name.length > MAX_NAME) {
    throw new TypeError(`a workflow name must be a non-empty string of at most ${MAX_NAME} characters`);
  }
  if (typeof options?.handler !== "function") throw new TypeError(`workflow ${JSON.stringify(name)} needs a handler function`);
  const retries = options.retries;
  if (retries !== undefined && !(Number.isInteger(retries) && retries >= 0)) {
    throw new TypeError(`retries of ${JSON.stringify(name)} must be an integer >= 0`);
  }
  const timeout = options.timeout;
  if (timeout !== undefined && !(typeof timeout === "number" && Number.isFinite(timeout) && timeout >= 0)) {
    throw new TypeError(`timeout of ${JSON.stringify(name)} must be a number of seconds >= 0 (0 = no limit)`);
  }
  const group = options.worker ?? DEFAULT_GROUP;
  if (typeof group !== "string" || group.length === 0 || group.length > MAX_NAME) {
    throw new TypeError(`the worker group of ${JSON.stringify(name)} must be a non-empty string`);
  }
  const reg = registry();
  const existing = reg.get(name);
  if (existing !== undefined && existing.handler !== options.handler) {
    throw new Error(`workflow ${JSON.stringify(name)} is defined twice; names must be unique`);
  }
  const wf: Workflow<P, R> = Object.freeze({ name, group, retries, timeout, handler: options.handler });
  reg.set(name, wf as Workflow);
  return wf;
}

/** Every workflow defined so far, by name. */
export function allWorkflows(): Map<string, Workflow> {
  return new Map(registry());
}

/** The workflows of one group. */
export function workflowsOf(group: string): Map<string, Workflow> {
  return new Map([...registry()].filter(([, wf]) => wf.group === group));
}

/** Forget every definition (for tests of the registry itself). */
export function clearWorkflows(): void {
  registry().clear();
}

/** Throw this from a handler (or a step) to fail the job at once: no retries. */
export class Permanent extends Error {
  override name = "Permanent";
}
