/**
 * A small client for Node apps (where jobs are often born): enqueue, wait, run, get, cancel.
 *
 * Job ids are made here, so a request re-sent after a lost answer never makes a second job.
 * Unanswered requests are re-sent with backoff (1 s doubling to 4 s) until their deadline.
 */
import { resolveCurve, type KeyOptions } from "./keys.js";
import { Link, type CurveKeys } from "./link.js";
import { Command, decode, encode, idFromStr, idToStr, newJobId, num, packValue, unpackValue, type Body } from "./protocol.js";
import { RemoteError } from "./step.js";
import type { Workflow } from "./registry.js";

export interface EnqueueOptions {
  /** The group that runs it (default: the workflow's, else the one its workers announced). */
  group?: string;
  delayMs?: number;
  priority?: number;
  retries?: number;
  /** A deduplication key: while a job holds it, enqueueing with it returns that job's id. */
  key?: string;
  keyTtlMs?: number;
}

/** A job as the broker reports it; `value` and `payload` decoded. */
export interface JobResult {
  id: string;
  status: string;
  ok: boolean;
  value: unknown;
  error: string | null;
  errorKind: string | null;
  attempts: number;
  workflow: string;
  group: string;
}

/** No answer from the broker within the call's timeout. */
export class BrokerUnreachable extends Error {
  override name = "BrokerUnreachable";
}

interface Pending {
  frames: Buffer[];
  deadline: number;
  timeoutMs: number;
  resendAt: number;
  resendMs: number;
  resolve: (body: Body) => void;
  reject: (err: Error) => void;
}

export function resultOf(record: Body): JobResult {
  const value = record.value instanceof Uint8Array ? unpackValue(record.value) : null;
  return {
    id: idToStr(record.id as Uint8Array), status: String(record.state), ok: record.state === "completed", value,
    error: (record.error as string | undefined) ?? null, errorKind: (record.error_kind as string | undefined) ?? null,
    attempts: num(record.attempts), workflow: String(record.workflow ?? ""), group: String(record.group ?? ""),
  };
}

function jobItems(workflow: Workflow | string, payloads: unknown[], options: EnqueueOptions): Body[] {
  const name = typeof workflow === "string" ? workflow : workflow.name;
  const group = options.group ?? (typeof workflow === "string" ? undefined : workflow.group);
  return payloads.map((payload) => {
    const item: Body = { id: newJobId(), wf: name, payload: packValue(payload) };
    if (group !== undefined) item.group = group;
    if (options.delayMs) item.delay_ms = Math.round(options.delayMs);
    if (options.priority) item.priority = options.priority;
    if (options.retries !== undefined) item.retries = options.retries;
    if (options.key !== undefined) item.key = options.key;
    if (options.keyTtlMs) item.key_ttl_ms = Math.round(options.keyTtlMs);
    return item;
  });
}

export class Client {
  private readonly link: Link;
  private readonly pending = new Map<number, Pending>();
  private nextRid = 1;
  private readonly timer: NodeJS.Timeout;

  /**
   * `endpoint` defaults to SHOAL_BROKER, else tcp://127.0.0.1:5555; `timeoutS` bounds each call.
   * `keys`: CURVE key files (`{ key, brokerKey }`, see KeyOptions: else SHOAL_KEY / SHOAL_BROKER_KEY,
   * else shoal.toml's `[security]`), or keys already loaded (`CurveKeys`). A missing, unreadable or
   * malformed key file, or half a pair, throws KeyError here.
   */
  constructor(endpoint = process.env.SHOAL_BROKER ?? "tcp://127.0.0.1:5555", private readonly timeoutS = 10,
              keys: KeyOptions | CurveKeys = {}) {
    const curve = "serverKey" in keys ? keys : resolveCurve(keys);
    this.link = new Link(endpoint, (frames) => this.onFrames(frames), curve);
    this.timer = setInterval(() => this.tick(), 100);
    this.timer.unref();
  }

  private call(command: string, body: Body, timeoutS = this.timeoutS): Promise<Body> {
    const rid = this.nextRid++;
    const frames = encode(command, { ...body, rid });
    const now = performance.now();
    return new Promise((resolve, reject) => {
      this.pending.set(rid, { frames, deadline: now + timeoutS * 1000, timeoutMs: timeoutS * 1000, resendAt: now + 1000, resendMs: 1000, resolve, reject });
      this.link.send(frames);
    });
  }

  private tick(): void {
    const now = performance.now();
    for (const [rid, p] of this.pending) {
      if (now >= p.deadline) {
        this.pending.delete(rid);
        const why = this.link.handshakeError;
        p.reject(new BrokerUnreachable(`no answer from the broker at ${this.link.endpoint} within ${(p.timeoutMs / 1000).toFixed(1)}s` +
          (why ? `: ${why}` : this.link.curve ? "" : " (a broker with CURVE on never answers a client without a key: give one, see KeyOptions)")));
      } else if (now >= p.resendAt) { // same rid and job ids: safe to repeat
        p.resendMs = Math.min(p.resendMs * 2, 4000);
        p.resendAt = now + p.resendMs;
        this.link.send(p.frames);
      }
    }
  }

  private onFrames(frames: Buffer[]): void {
    let command: string;
    let body: Body;
    try {
      [command, body] = decode(frames);
    } catch {
      return; // not ours to fix; the request times out if its answer never comes
    }
    const p = this.pending.get(num(body.rid, -1));
    if (p === undefined) return;
    this.pending.delete(num(body.rid));
    if (command === Command.REPLY) p.resolve(body);
    else p.reject(new RemoteError(String(body.code), String(body.message)));
  }

  /** Enqueue one job; resolves with its id once the broker has committed it. */
  async enqueue(workflow: Workflow | string, payload: unknown = null, options: EnqueueOptions = {}): Promise<string> {
    return (await this.enqueueMany(workflow, [payload], options))[0];
  }

  /** Enqueue many jobs in one request (one commit). */
  async enqueueMany(workflow: Workflow | string, payloads: unknown[], options: EnqueueOptions = {}): Promise<string[]> {
    const reply = await this.call(Command.ENQUEUE, { jobs: jobItems(workflow, payloads, options) });
    return (reply.ids as Uint8Array[]).map((id) => idToStr(id));
  }

  /**
   * Enqueue one job and resolve when it is final, in one trip: the ENQUEUE and a WAIT on its id
   * are sent together, and the broker registers the wait in the pass that stores the job. A held
   * `key` resolves with the job that holds it; `timeoutS` bounds the wait, from the call.
   */
  async run(workflow: Workflow | string, payload: unknown = null, options: EnqueueOptions = {}, timeoutS = 60): Promise<JobResult> {
    const jobs = jobItems(workflow, [payload], options);
    const made = jobs[0].id as Uint8Array;
    const started = performance.now();
    const enqueued = this.call(Command.ENQUEUE, { jobs });
    const waited = this.call(Command.WAIT, { id: made }, timeoutS);
    waited.catch(() => undefined); // its outcome is read below, or not needed (a refused enqueue)
    const id = ((await enqueued).ids as Uint8Array[])[0];
    if (Buffer.compare(Buffer.from(id), Buffer.from(made)) === 0) {
      try {
        return resultOf((await waited).job as Body);
      } catch (err) {
        if (!(err instanceof RemoteError && err.code === "unknown_job")) throw err;
      }
    }
    return this.wait(idToStr(id), Math.max(timeoutS - (performance.now() - started) / 1000, 0.001));
  }

  /** Resolves when the job is final (the broker pushes the answer); `timeoutS` bounds the wait. */
  async wait(jobId: string, timeoutS = 60): Promise<JobResult> {
    const reply = await this.call(Command.WAIT, { id: idFromStr(jobId) }, timeoutS);
    return resultOf(reply.job as Body);
  }

  /** The job now, or null when the broker has no such job. */
  async get(jobId: string): Promise<JobResult | null> {
    const reply = await this.call(Command.GET, { ids: [idFromStr(jobId)] });
    const record = (reply.jobs as (Body | null)[])[0];
    return record ? resultOf(record) : null;
  }

  /** Cancel a job (a running one's worker is told to stop it). */
  async cancel(jobId: string): Promise<{ cancelled: boolean; state: string; message: string }> {
    const reply = await this.call(Command.CANCEL, { id: idFromStr(jobId) });
    return { cancelled: Boolean(reply.cancelled), state: String(reply.state), message: String(reply.message) };
  }

  close(): void {
    clearInterval(this.timer);
    for (const p of this.pending.values()) p.reject(new Error("the client was closed"));
    this.pending.clear();
    this.link.close(0);
  }
}
