/**
 * Durable steps: the `step` argument of a handler.
 *
 * `step.run(name, fn)` runs `fn` once per job: its result is committed by the broker (STEP,
 * answered by REPLY) before `run` returns, and a later attempt gets the stored value without
 * calling `fn`. `sleep` and `wait` end the run (SUSPEND gives the slot back); the handler runs
 * again from the top when due, every finished step answering from storage.
 */
import { childJobId, Command, idFromStr, idToStr, packValue, unpackValue, type Body, num, E_STALE_LEASE } from "./protocol.js";
import { Permanent, type Workflow } from "./registry.js";

/** How a step reaches the broker: a request answered by REPLY (resolved) or ERROR (rejected). */
export interface Channel {
  call(command: string, body: Body): Promise<Body>;
}

/** An ERROR answer from the broker. */
export class RemoteError extends Error {
  constructor(readonly code: string, message: string) {
    super(`${code}: ${message}`);
    this.name = "RemoteError";
  }
}

/** A step used wrongly (repeated name, unencodable or oversized result): a bug, never retried. */
export class StepError extends Permanent {
  override name = "StepError";
}

/** A child job that `step.wait` waited for did not complete. */
export class ChildFailed extends Error {
  override name = "ChildFailed";
}

/** `step.wait` ran past its timeout before every child was final. */
export class StepTimeout extends Error {
  override name = "StepTimeout";
}

/** Ends the run to give the slot back (sleep, wait). Not for handlers to catch. */
export class Suspend extends Error {
  constructor(readonly stepName: string, readonly dueMs: number, readonly waitOn: Uint8Array[] = []) {
    super(`suspended at step ${JSON.stringify(stepName)}`);
    this.name = "Suspend";
  }
}

/** The job was cancelled; thrown by step methods so the run stops at the next step. */
export class Cancelled extends Error {
  override name = "Cancelled";
}

/** The run passed its workflow's timeout: the job fails with kind `timeout` (and is retried). */
export class TimedOut extends Error {
  override name = "TimedOut";
}

/** This run no longer holds the job's lease (it was redelivered); stop now. */
export class LeaseLost extends Error {
  override name = "LeaseLost";
}

export interface JobMessage {
  id: Uint8Array;
  token: bigint;
  wf: string;
  payload: Uint8Array;
  attempt: number;
  maxRetries: number;
  steps: Record<string, Body>;
}

export interface RunOptions {
  /** Tries inside this run before the step (and so the attempt) fails; default 0. */
  retries?: number;
  /** Seconds before the first in-step retry, doubling (at most 30 s); default 0.1. */
  backoff?: number;
}

const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export class Step {
  /** The job's id as text. */
  readonly jobId: string;
  readonly workflow: string;
  /** This run's attempt, from 1. */
  readonly attempt: number;
  /** How a handler learns of a cancel: pass it to fetch() and the like. */
  readonly signal: AbortSignal;
  /** Set when the run ended itself by suspending, losing its lease, being cancelled or timing out. */
  ended: Suspend | LeaseLost | Cancelled | TimedOut | null = null;
  private readonly abort = new AbortController();
  private readonly stored: Map<string, Body>;
  private readonly used = new Set<string>();

  constructor(private readonly job: JobMessage, private readonly channel: Channel,
              private readonly maxStepBytes = 1024 * 1024) {
    this.jobId = idToStr(job.id);
    this.workflow = job.wf;
    this.attempt = job.attempt;
    this.signal = this.abort.signal;
    this.stored = new Map(Object.entries(job.steps));
  }

  /** True once the run should stop: the job was cancelled or the run passed its timeout. */
  get cancelled(): boolean {
    return this.signal.aborted;
  }

  /** Called by the worker when the broker cancels the job. */
  cancel(): void {
    this.abort.abort(new Cancelled(`job ${this.jobId} was cancelled`));
  }

  /** Called by the worker when the run passes its timeout: `signal` aborts, step calls throw. */
  timeOut(limitS: number): TimedOut {
    const err = this.end(new TimedOut(`timed out after ${limitS}s`));
    this.abort.abort(err);
    return err;
  }

  private end<E extends Suspend | LeaseLost | Cancelled | TimedOut>(err: E): E {
    this.ended ??= err;
    return err;
  }

  private claim(name: string): Body | undefined {
    this.stopIfAsked(`before step ${JSON.stringify(name)}`);
    if (typeof name !== "string" || name.length === 0) throw new StepError("a step needs a non-empty name");
    if (this.used.has(name)) {
      throw new StepError(`step name ${JSON.stringify(name)} is used twice in this run of ${JSON.stringify(this.workflow)}; names must be unique`);
    }
    this.used.add(name);
    return this.stored.get(name);
  }

  private encodeValue(name: string, value: unknown): Uint8Array {
    let packed: Uint8Array;
    try {
      packed = packValue(value);
    } catch (err) {
      throw new StepError(`result of step ${JSON.stringify(name)} cannot be encoded with msgpack: ${(err as Error).message}`);
    }
    if (packed.length > this.maxStepBytes) {
      throw new StepError(`result of step ${JSON.stringify(name)} is ${packed.length} bytes, over the limit of ${this.maxStepBytes}`);
    }
    return packed;
  }

  private static answer(name: string, record: Body): unknown {
    if (record.permanent) throw new Permanent(String(record.error ?? `step ${JSON.stringify(name)} failed permanently`));
    return "value" in record ? unpackValue(record.value as Uint8Array) : undefined;
  }

  /** A cancelled or timed-out run stores no more steps: its outcome is reported already. */
  private stopIfAsked(where: string): void {
    if (this.ended instanceof TimedOut) throw this.ended;
    if (this.cancelled) throw this.end(new Cancelled(`job cancelled ${where}`));
  }

  private async store(name: string, record: Body, enqueue?: Body[]): Promise<Body> {
    this.stopIfAsked(`while step ${JSON.stringify(name)} ran`);
    const body: Body = { id: this.job.id, token: this.job.token, name, record };
    if (enqueue && enqueue.length) body.enqueue = enqueue;
    try {
      const reply = await this.channel.call(Command.STEP, body);
      return reply.record as Body;
    } catch (err) {
      if (err instanceof RemoteError && err.code === E_STALE_LEASE) throw this.end(new LeaseLost(err.message));
      throw err;
    }
  }

  /** Run `fn` once for this job; later attempts get the stored result. */
  async run<T>(name: string, fn: () => T | Promise<T>, options: RunOptions = {}): Promise<T> {
    const record = this.claim(name);
    if (record !== undefined) return Step.answer(name, record) as T;
    const retries = options.retries ?? 0;
    const backoff = options.backoff ?? 0.1;
    const started = performance.now();
    let value: T | undefined;
    let attempt = 1;
    for (; ; attempt++) {
      try {
        value = await fn();
        break;
      } catch (err) {
        if (err instanceof Permanent) {
          await this.store(name, { error: String(err.message), permanent: true, attempts: attempt });
          throw err;
        }
        if (attempt > retries) throw err;
        await delay(Math.min(backoff * 2 ** (attempt - 1), 30) * 1000);
      }
    }
    const packed = this.encodeValue(name, value);
    const stored = await this.store(name, { value: packed, attempts: attempt, duration_ms: Math.round(performance.now() - started) });
    return Step.answer(name, stored) as T;
  }

  /** Durable sleep: the slot is given back and the run resumes here after `seconds`. */
  async sleep(name: string, seconds: number): Promise<void> {
    this.sleepCheck(name, Date.now() + Math.round(seconds * 1000));
  }

  /** Durable sleep until a Date (or Unix time in seconds). */
  async sleepUntil(name: string, when: Date | number): Promise<void> {
    this.sleepCheck(name, Math.round((when instanceof Date ? when.getTime() / 1000 : when) * 1000));
  }

  private sleepCheck(name: string, wakeMs: number): void {
    const record = this.claim(name);
    const wake = record !== undefined && "wake_ms" in record ? num(record.wake_ms) : wakeMs;
    if (Date.now() < wake) throw this.end(new Suspend(name, wake));
  }

  /** Start a child job exactly once for this step name; returns its id. */
  async enqueue(name: string, workflow: Workflow | string, payload: unknown = null, options: { group?: string } = {}): Promise<string> {
    return (await this.enqueueMany(name, workflow, [payload], options))[0];
  }

  /** Start many child jobs in one step (one round trip, one transaction). */
  async enqueueMany(name: string, workflow: Workflow | string, payloads: unknown[], options: { group?: string } = {}): Promise<string[]> {
    const record = this.claim(name);
    if (record !== undefined) return unpackValue(record.value as Uint8Array) as string[];
    const wfName = typeof workflow === "string" ? workflow : workflow.name;
    const group = options.group ?? (typeof workflow === "string" ? undefined : workflow.group);
    const items = payloads.map((payload, index) => {
      const item: Body = { id: childJobId(this.job.id, name, index), wf: wfName, payload: this.encodeValue(name, payload) };
      if (group !== undefined) item.group = group;
      return item;
    });
    const ids = items.map((item) => idToStr(item.id as Uint8Array));
    await this.store(name, { value: packValue(ids) }, items);
    return ids;
  }

  /** Suspend until the children are final; their values (one value for one id). */
  async wait(name: string, ids: string | string[], options: { timeout?: number } = {}): Promise<unknown> {
    const record = this.claim(name);
    const single = typeof ids === "string";
    const raw = (single ? [ids] : ids).map((i) => idFromStr(i));
    if (record !== undefined && "children" in record) {
      const values = (record.children as unknown[][]).map(([childId, state, value, error]) => {
        if (state !== "completed") {
          throw new ChildFailed(`child job ${idToStr(childId as Uint8Array)} of step ${JSON.stringify(name)} ended ${state}: ${error}`);
        }
        return value == null ? null : unpackValue(value as Uint8Array);
      });
      return single ? values[0] : values;
    }
    const deadline = num(record?.deadline_ms) || (options.timeout ? Date.now() + Math.round(options.timeout * 1000) : 0);
    if (deadline && Date.now() >= deadline) {
      throw new StepTimeout(`step ${JSON.stringify(name)}: children not all final within the timeout`);
    }
    throw this.end(new Suspend(name, deadline, raw));
  }
}
