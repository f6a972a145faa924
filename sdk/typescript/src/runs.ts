/**
 * One run of a handler, and the outcome it makes (DONE, FAIL of each kind, SUSPEND, or nothing
 * for a lost lease). Knows nothing of sockets or heartbeats: the worker shell starts runs and
 * sends their outcomes.
 */
import type { Outcome } from "./outbox.js";
import { bytes, num, packValue, token, unpackValue, type Body } from "./protocol.js";
import { Permanent, type Workflow } from "./registry.js";
import { Cancelled, LeaseLost, Suspend, TimedOut, type JobMessage, type Step } from "./step.js";

/**
 * Run `job` to its outcome (null: the lease was lost, report nothing). `handlerDone` is called
 * once the handler's own promise settles, which after a timeout may be later, or never.
 */
export async function execute(job: JobMessage, step: Step, workflows: Map<string, Workflow>, group: string,
                            timeoutS: number, handlerDone: () => void): Promise<Outcome | null> {
  const started = performance.now();
  const elapsed = () => Math.round(performance.now() - started);
  const wf = workflows.get(job.wf);
  if (wf === undefined) {
    handlerDone();
    const names = [...workflows.keys()].sort().join(", ") || "none";
    return failure(job, "unknown_workflow", `workflow ${JSON.stringify(job.wf)} is not registered in group ` +
      `${JSON.stringify(group)} (this worker has: ${names})`, undefined, 0);
  }
  let payload: unknown;
  try {
    payload = unpackValue(job.payload);
  } catch (err) {
    handlerDone();
    return failure(job, "bad_payload", `payload is not valid msgpack: ${(err as Error).message}`, undefined, elapsed());
  }
  let value: unknown;
  try {
    value = await withTimeout(wf.handler, payload, step, wf.timeout ?? timeoutS, handlerDone);
  } catch (err) {
    return ended(job, step, elapsed()) ?? fromError(job, err, elapsed());
  }
  const end = ended(job, step, elapsed());
  if (end !== undefined) return end; // the handler swallowed a suspension or a lost lease
  let packed: Uint8Array;
  try {
    packed = packValue(value);
  } catch (err) {
    return failure(job, "bad_result", `result cannot be encoded with msgpack: ${(err as Error).message}`, undefined, elapsed());
  }
  return { id: job.id, token: job.token, workflow: job.wf, kind: "done", value: packed, durationMs: elapsed() };
}

export function parseJob(raw: Body): JobMessage {
  const steps = raw.steps && typeof raw.steps === "object" ? raw.steps as Record<string, Body> : {};
  return {
    id: bytes(raw.id, "a job's id"), token: token(raw.token), wf: String(raw.wf), payload: bytes(raw.payload, "a job's payload"),
    attempt: num(raw.attempt, 1), maxRetries: num(raw.max_retries), steps,
  };
}

export function failure(job: JobMessage, kind: string, error: string, traceback: string | undefined, durationMs: number): Outcome {
  return { id: job.id, token: job.token, workflow: job.wf, kind: "fail", failKind: kind, error, traceback, durationMs };
}

/** The outcome of a run that ended itself (suspend, lost lease, cancel); undefined if it did not. */
function ended(job: JobMessage, step: Step, durationMs: number): Outcome | null | undefined {
  const end = step.ended;
  if (end instanceof Suspend) {
    return { id: job.id, token: job.token, workflow: job.wf, kind: "suspend", durationMs,
      suspend: { name: end.stepName, dueMs: end.dueMs, waitOn: end.waitOn } };
  }
  if (end instanceof LeaseLost) return null;
  if (end instanceof TimedOut) return failure(job, "timeout", end.message, undefined, durationMs);
  if (end instanceof Cancelled || step.cancelled) return failure(job, "cancelled", "cancelled", undefined, durationMs);
  return undefined;
}

/** Run the handler; past `limitS` seconds (0: no limit) stop waiting for it and time the step out. */
function withTimeout(handler: Workflow["handler"], payload: unknown, step: Step, limitS: number,
                     handlerDone: () => void): Promise<unknown> {
  const running = Promise.resolve().then(() => handler(payload, step)).finally(handlerDone);
  if (!(limitS > 0)) return running;
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    // a promise cannot be stopped: the handler learns of it by step.signal and failing step calls
    timer = setTimeout(() => reject(step.timeOut(limitS)), limitS * 1000);
  });
  return Promise.race([running, expired]).finally(() => clearTimeout(timer));
}

function fromError(job: JobMessage, err: unknown, durationMs: number): Outcome {
  const kind = err instanceof Permanent ? "permanent" : "error";
  if (err instanceof Error) return failure(job, kind, `${err.name}: ${err.message}`, err.stack, durationMs);
  return failure(job, kind, `thrown: ${String(err)}`, undefined, durationMs);
}
