/**
 * The worker: connection, HELLO, credit, heartbeats, reconnect, drain, and the runs.
 *
 * Heartbeats go out from a timer on the event loop; a handler that blocks the loop (CPU-bound
 * code without an await) for longer than the group's lease loses its job, so keep handlers
 * async. The broker is declared gone after `liveness` silent intervals; the worker then
 * reconnects with doubling backoff and says HELLO again, listing the jobs it still holds, and
 * re-sends the outcomes it sent lately (the broker does not acknowledge them).
 */
import { hostname } from "node:os";
import { Backoff } from "./backoff.js";
import { Calls } from "./calls.js";
import { Link, type CurveKeys } from "./link.js";
import { encodeOutcomes, Outbox, type Outcome } from "./outbox.js";
import { Command, decode, E_BAD_REQUEST, E_FORBIDDEN, encode, hex, idToStr, token, type Body } from "./protocol.js";
import type { Workflow } from "./registry.js";
import { execute, failure, parseJob } from "./runs.js";
import { Step, TimedOut, type JobMessage } from "./step.js";

export interface WorkerOptions {
  endpoint: string;
  group: string;
  concurrency: number;
  workflows: Map<string, Workflow>;
  server?: string;
  /** Seconds a drain waits for in-flight jobs before handing them back (default 30). */
  graceS?: number;
  /** Seconds between heartbeats (the broker's `heartbeat_interval`; default 1). */
  heartbeatS?: number;
  /** Silent intervals before the broker is declared gone (default 3). */
  liveness?: number;
  /** Longest wait between reconnects (default 8 s). */
  reconnectMaxS?: number;
  maxStepBytes?: number;
  /** Seconds a run may take unless its workflow sets `timeout` (the group's `timeout`; 0 = no limit). */
  timeoutS?: number;
  /** Drain and exit 0 after this many jobs, so a supervisor starts a fresh process (0 = never). */
  maxJobs?: number;
  /** Drain and exit 0 when resident memory passes this many MiB (0 = never). */
  maxMemoryMb?: number;
  /** Ms a handler told to stop may run on before the worker drains to replace itself (default 5000). */
  stuckGraceMs?: number;
  curve?: CurveKeys;
  log?: (level: "info" | "warning" | "error", message: string) => void;
}

interface Run {
  job: JobMessage;
  step: Step;
  /** Its outcome was reported (or it was handed back). */
  settled: boolean;
  /** The handler's promise settled (after a timeout or cancel it may run on). */
  handlerDone: boolean;
}

/** A handler told to stop (timeout, cancel) that runs on this long makes the worker replace itself. */
const STUCK_GRACE_MS = 5000;

const monotonic = () => performance.now();

function defaultLog(level: string, message: string): void {
  process.stderr.write(`${new Date().toISOString()} ${level.toUpperCase()} shoal.worker: ${message}\n`);
}

export class Worker {
  private link: Link | null = null;
  private readonly calls: Calls;
  private readonly outbox: Outbox;
  private readonly backoff: Backoff;
  private readonly runs = new Map<string, Run>();
  /** Jobs this worker holds on the broker (running, or a deferred result): listed in HELLO. */
  private readonly leases = new Map<string, { id: Uint8Array; token: bigint }>();
  private readonly log: (level: "info" | "warning" | "error", message: string) => void;
  private readonly hbMs: number;
  private readonly liveness: number;
  private lastHeard = 0;
  private lastSent = 0;
  private reconnectAt: number | null = null;
  private helloEchoUntil = 0;
  private rejoining = false;
  private draining = false;
  private drainDeadline = 0;
  private timer: NodeJS.Timeout | null = null;
  private finish: ((code: number) => void) | null = null;
  private finishing = false;
  /** Why the broker refused this worker (exit code 2), if it did. */
  refused: string | null = null;
  /** Whether the broker ever answered: a CURVE broker never answers a key it does not admit. */
  private heardOnce = false;
  private handshakeLogged: string | null = null;
  jobsDone = 0;

  constructor(readonly options: WorkerOptions) {
    if (!(Number.isInteger(options.concurrency) && options.concurrency >= 1)) throw new RangeError("concurrency must be an integer >= 1");
    this.hbMs = (options.heartbeatS ?? 1) * 1000;
    this.liveness = options.liveness ?? 3;
    const reconnectMaxMs = (options.reconnectMaxS ?? 8) * 1000;
    this.log = options.log ?? defaultLog;
    this.calls = new Calls((frames) => this.sendFrames(frames));
    this.outbox = new Outbox(this.hbMs * (this.liveness + 2) + reconnectMaxMs, 2 * this.hbMs);
    this.backoff = new Backoff(this.hbMs, Math.max(this.hbMs, reconnectMaxMs));
  }

  /** Serve until drained; resolves with the exit code (0, or 2 when the broker refused us). */
  run(): Promise<number> {
    const o = this.options;
    return new Promise((resolve) => {
      this.finish = resolve;
      this.connect(false);
      this.lastHeard = monotonic();
      this.log("info", `shoal worker (typescript) for group ${JSON.stringify(o.group)} connected to ${o.endpoint} ` +
        `(${o.curve ? `CURVE, key ${o.curve.publicKey}` : "no CURVE key"}) with ${o.concurrency} slots; workflows: ${[...o.workflows.keys()].join(", ")}`);
      this.timer = setInterval(() => this.tick(), Math.max(10, Math.min(100, this.hbMs / 4)));
    });
  }

  /** Stop taking jobs; finish in-flight ones within the grace time, hand back the rest, leave. */
  drain(graceS = this.options.graceS ?? 30): void {
    if (this.draining) return;
    this.draining = true;
    this.drainDeadline = monotonic() + graceS * 1000;
    this.log("info", `draining: finishing ${this.runs.size} in-flight jobs within ${graceS}s; a second SIGTERM or ` +
      `Ctrl-C exits at once (unfinished jobs are then redelivered)`);
    this.send(Command.READY, { slots: 0 }); // before any outcome: no new job lands meanwhile
    this.tick();
  }

  // --- connection ------------------------------------------------------------------
  private connect(reconnecting: boolean): void {
    this.link?.close(0);
    this.link = new Link(this.options.endpoint, (frames) => this.onFrames(frames), this.options.curve, (why) => {
      // once per reason, not per reconnect: the worker keeps retrying (the key may be admitted by a reload)
      if (why !== this.handshakeLogged) this.log("error", `${why}; retrying`);
      this.handshakeLogged = why;
    });
    if (reconnecting) this.announce();
    else this.sendHello();
  }

  /** HELLO again (the broker restarted or we lost it) and re-send recent outcomes, once. */
  private announce(): void {
    this.sendHello();
    for (const frames of encodeOutcomes(this.outbox.toResend(monotonic()))) this.sendFrames(frames);
    this.helloEchoUntil = monotonic() + 2 * this.hbMs;
    this.rejoining = true;
  }

  private sendHello(): void {
    const o = this.options;
    const workflows: Record<string, Body> = {};
    for (const [name, wf] of o.workflows) workflows[name] = { retries: wf.retries ?? null };
    this.send(Command.HELLO, {
      group: o.group, pid: process.pid, host: hostname(), server: o.server ?? "",
      slots: this.draining ? 0 : o.concurrency, workflows,
      running: [...this.leases.values()].map((l) => [l.id, l.token]),
    });
  }

  private send(command: string, body: Body): void {
    this.sendFrames(encode(command, body));
  }

  private sendFrames(frames: Buffer[]): void {
    this.link?.send(frames);
    this.lastSent = monotonic();
  }

  // --- timers ----------------------------------------------------------------------
  private tick(): void {
    if (this.finishing) return;
    const now = monotonic();
    this.calls.tick(now);
    for (const frames of encodeOutcomes(this.outbox.due(now))) this.sendFrames(frames);
    for (const o of this.outbox.released(now)) {
      if (this.leases.get(hex(o.id))?.token === o.token && !this.runs.has(hex(o.id))) this.leases.delete(hex(o.id));
      this.log("info", `job ${idToStr(o.id)} (${o.workflow}): result stored after being deferred`);
    }
    if (this.draining) {
      if (this.leases.size === 0) return void this.stop(0);
      if (now >= this.drainDeadline) {
        this.handBack();
        return void this.stop(0);
      }
    }
    this.keepAlive(now);
  }

  private keepAlive(now: number): void {
    if (this.reconnectAt !== null) {
      if (now >= this.reconnectAt) {
        this.reconnectAt = null;
        this.connect(true);
        this.lastHeard = monotonic();
      }
    } else if (now - this.lastHeard > this.hbMs * this.liveness) {
      const wait = this.backoff.next();
      this.log("warning", `broker at ${this.options.endpoint} is silent; reconnecting in ${(wait / 1000).toFixed(1)}s` +
        // a refused handshake was logged already; a broker that is up and silent may drop us unexplained
        (this.heardOnce || this.handshakeLogged ? "" : " (it never answered: if its CURVE is on, check this worker's key and broker key)"));
      this.reconnectAt = now + wait;
    } else if (now - this.lastSent >= this.hbMs) {
      this.send(Command.HEARTBEAT, {});
    }
  }

  private handBack(): void {
    const returned = [...this.leases.values()].map((l) => [l.id, l.token]);
    this.log("warning", `grace time over; handing ${returned.length} unfinished jobs back to the broker`);
    this.send(Command.RETURN, { jobs: returned });
    for (const run of this.runs.values()) run.settled = true; // their outcomes are no longer ours
    this.runs.clear();
    this.leases.clear();
  }

  private async stop(code: number): Promise<void> {
    if (this.finishing) return;
    this.finishing = true;
    if (this.timer) clearInterval(this.timer);
    if (code === 0 && this.reconnectAt === null) this.send(Command.BYE, {});
    const link = this.link;
    if (link) {
      await link.idle();
      link.close(1000); // give the last DONE / RETURN / BYE a moment to leave
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
    this.finish?.(code);
  }

  // --- messages --------------------------------------------------------------------
  private onFrames(frames: Buffer[]): void {
    let command: string;
    let body: Body;
    const now = monotonic();
    this.lastHeard = now;
    this.heardOnce = true;
    this.outbox.heard(now);
    this.backoff.reset();
    this.reconnectAt = null; // the connection works again: no new socket needed
    try {
      [command, body] = decode(frames);
    } catch (err) {
      this.log("warning", `bad message from the broker: ${(err as Error).message}`);
      return;
    }
    if (command === Command.RECONNECT) { // a restarted broker that does not know us (yet)
      if (now >= this.helloEchoUntil) this.announce();
      return;
    }
    this.helloEchoUntil = 0; // anything else proves the broker knows us: the next RECONNECT is news
    if (this.rejoining) {
      this.rejoining = false;
      this.log("info", `rejoined the broker at ${this.options.endpoint} with ${this.leases.size} jobs in flight`);
    }
    try {
      this.dispatch(command, body);
    } catch (err) {
      this.log("warning", `bad ${command} from the broker: ${(err as Error).message}`);
    }
  }

  private dispatch(command: string, body: Body): void {
    if (command === Command.JOB) {
      for (const raw of (Array.isArray(body.jobs) ? body.jobs : []) as Body[]) this.start(parseJob(raw));
    } else if (command === Command.CANCEL) {
      const run = body.id instanceof Uint8Array ? this.runs.get(hex(body.id)) : undefined;
      if (run !== undefined && run.job.token === token(body.token)) {
        this.log("info", `job ${idToStr(run.job.id)} was cancelled; stopping it`);
        run.step.cancel();
        this.report(run, failure(run.job, "cancelled", "cancelled", undefined, 0));
      }
    } else if (command === Command.DEFER) {
      for (const o of this.outbox.defer(body, monotonic())) {
        this.log("warning", `job ${idToStr(o.id)} (${o.workflow}): the broker cannot store its result yet ` +
          `(${String(body.reason || "no reason given")}); keeping it and sending it again until stored`);
      }
      for (const h of this.outbox.held.values()) this.leases.set(hex(h.outcome.id), { id: h.outcome.id, token: h.outcome.token });
    } else if (command === Command.REPLY || (command === Command.ERROR && body.rid != null)) {
      this.calls.answer(command, body);
    } else if (command === Command.ERROR) {
      const message = `${String(body.code)}: ${String(body.message)}`;
      this.log("error", `broker refused: ${message}`);
      // our HELLO was refused (a workflow claimed by two groups), or our key may not serve this
      // group: saying HELLO again would be refused again
      if (body.code === E_BAD_REQUEST || body.code === E_FORBIDDEN) {
        this.refused = message;
        void this.stop(2);
      }
    }
  }

  // --- runs ------------------------------------------------------------------------
  private start(job: JobMessage): void {
    const key = hex(job.id);
    this.leases.set(key, { id: job.id, token: job.token });
    this.log("info", `job ${idToStr(job.id)} (${job.wf}) received, attempt ${job.attempt}`);
    const step = new Step(job, { call: (command, b) => this.calls.call(command, b, monotonic()) }, this.options.maxStepBytes);
    const run: Run = { job, step, settled: false, handlerDone: false };
    this.runs.set(key, run);
    step.signal.addEventListener("abort", () => this.watchStopped(run), { once: true });
    const o = this.options;
    void execute(job, step, o.workflows, o.group, o.timeoutS ?? 0, () => { run.handlerDone = true; })
      .then((outcome) => this.report(run, outcome));
  }

  /**
   * A run told to stop (timeout or cancel) is reported at once, but a promise cannot be killed:
   * one whose handler ignores `step.signal` runs on beside the retry. Past the grace time this
   * worker takes no more jobs, lets the others finish and exits 0, so a fresh process replaces it
   * (what the Python worker does for a sync handler that ignores its stop).
   */
  private watchStopped(run: Run): void {
    const timer = setTimeout(() => {
      if (run.handlerDone || this.draining) return;
      this.log("warning", `job ${idToStr(run.job.id)} (${run.job.wf}) ignored its ${run.step.ended instanceof TimedOut ? "timeout" : "cancel"} ` +
        `for ${(this.options.stuckGraceMs ?? STUCK_GRACE_MS) / 1000}s and is still running; this worker takes no more jobs, ` +
        `lets the others finish, and exits so a fresh process replaces it`);
      this.drain();
    }, this.options.stuckGraceMs ?? STUCK_GRACE_MS);
    timer.unref();
  }

  private report(run: Run, outcome: Outcome | null): void {
    if (run.settled) return; // cancelled and reported already, or handed back
    run.settled = true;
    const key = hex(run.job.id);
    if (this.runs.get(key) === run) this.runs.delete(key);
    if (this.leases.get(key)?.token !== run.job.token) return;
    this.leases.delete(key);
    if (outcome === null) {
      this.log("warning", `job ${idToStr(run.job.id)} (${run.job.wf}) lost its lease (it was handed to another worker); its outcome is dropped`);
      return;
    }
    for (const frames of encodeOutcomes([outcome])) this.sendFrames(frames);
    this.outbox.sent([outcome], monotonic());
    this.jobsDone += 1;
    const what = outcome.kind === "done" ? "succeeded" : outcome.kind === "suspend" ?
      `suspended at step ${JSON.stringify(outcome.suspend?.name)}` : `failed (${outcome.failKind}): ${outcome.error}`;
    this.log(outcome.kind === "fail" ? "warning" : "info", `job ${idToStr(run.job.id)} (${run.job.wf}) ${what} in ${outcome.durationMs} ms`);
    this.maybeRecycle();
  }

  /** Leaky libraries: past `maxJobs` outcomes or `maxMemoryMb` resident, drain and exit 0 (a supervisor starts a fresh process). */
  private maybeRecycle(): void {
    const { maxJobs = 0, maxMemoryMb = 0 } = this.options;
    if (this.draining) return;
    const rssMb = Math.floor(process.memoryUsage.rss() / 2 ** 20);
    if (maxJobs > 0 && this.jobsDone >= maxJobs) {
      this.log("info", `recycling after ${this.jobsDone} jobs (max_jobs)`);
      this.drain();
    } else if (maxMemoryMb > 0 && rssMb > maxMemoryMb) {
      this.log("info", `recycling at ${rssMb} MiB resident (max_memory ${maxMemoryMb} MiB)`);
      this.drain();
    }
  }
}

