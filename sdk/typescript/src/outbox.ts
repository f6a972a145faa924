/**
 * Outcomes on their way to the broker, kept until the broker surely has them.
 *
 * The broker does not acknowledge DONE / FAIL / SUSPEND, so two things are kept here (as the
 * Python worker's outbox does):
 * - what was sent lately, re-sent after a reconnect (a restarted broker accepts a result by
 *   its lease token; one that already has it drops the repeat);
 * - results the broker answered with DEFER (it could not store them yet): held, their jobs
 *   still running on the broker, sent again every `retry_ms` until a re-send is met by
 *   silence instead of another DEFER.
 */
import { Command, encode, hex, num, type Body } from "./protocol.js";

export interface Outcome {
  id: Uint8Array;
  token: bigint;
  workflow: string;
  /** done: `value` is the packed result; fail: `failKind`, `error`; suspend: `suspend`. */
  kind: "done" | "fail" | "suspend";
  value?: Uint8Array;
  failKind?: string;
  error?: string;
  traceback?: string;
  durationMs: number;
  suspend?: { name: string; dueMs: number; waitOn: Uint8Array[] };
}

const MAX_RECENT = 10_000;

/** The messages that report `outcomes`: one DONE, one FAIL, one SUSPEND per suspension. */
export function encodeOutcomes(outcomes: Outcome[]): Buffer[][] {
  const messages: Buffer[][] = [];
  const done = outcomes.filter((o) => o.kind === "done").map((o) => [o.id, o.token, o.value ?? new Uint8Array(), o.durationMs]);
  const failed = outcomes.filter((o) => o.kind === "fail").map((o) => ({
    id: o.id, token: o.token, kind: o.failKind ?? "error", error: o.error ?? "",
    traceback: o.traceback ?? null, duration_ms: o.durationMs,
  }));
  if (done.length) messages.push(encode(Command.DONE, { results: done }));
  if (failed.length) messages.push(encode(Command.FAIL, { failures: failed }));
  for (const o of outcomes) {
    if (o.kind === "suspend" && o.suspend) {
      messages.push(encode(Command.SUSPEND, { id: o.id, token: o.token, name: o.suspend.name, due_ms: o.suspend.dueMs, wait_on: o.suspend.waitOn }));
    }
  }
  return messages;
}

interface Held {
  outcome: Outcome;
  resendAt: number;
  releaseAt: number;
}

/** Recently sent outcomes and deferred results, by job id (times in ms on a monotonic clock). */
export class Outbox {
  private readonly recent = new Map<string, { at: number; outcome: Outcome }>();
  readonly held = new Map<string, Held>();
  private heardAt = 0;

  /** `horizonMs`: how far back a reconnect re-sends; `quietMs`: a re-send met by no DEFER this long is stored. */
  constructor(private readonly horizonMs: number, private readonly quietMs: number) {}

  sent(outcomes: Outcome[], now: number): void {
    for (const o of outcomes) {
      const key = hex(o.id);
      this.recent.delete(key);
      this.recent.set(key, { at: now, outcome: o });
    }
    this.prune(now);
  }

  /** The broker was heard from: outcomes sent well before this it surely read. */
  heard(now: number): void {
    this.heardAt = now;
  }

  private prune(now: number): void {
    // measured back from the last time the broker was heard: a broker frozen longer than the
    // horizon must still get what was sent just before it froze
    const horizon = Math.min(now, this.heardAt || now) - this.horizonMs;
    for (const [key, entry] of this.recent) {
      if (this.recent.size <= MAX_RECENT && entry.at >= horizon) break;
      this.recent.delete(key);
    }
  }

  /** Everything to send again on a new connection: recent outcomes and every held result. */
  toResend(now: number): Outcome[] {
    this.prune(now);
    const again = [...this.recent.entries()].filter(([key]) => !this.held.has(key)).map(([, e]) => e.outcome);
    for (const h of this.held.values()) {
      again.push(h.outcome);
      h.resendAt = Infinity;
      h.releaseAt = now + this.quietMs;
    }
    return again;
  }

  /** Hold the results a DEFER names; returns those deferred for the first time. A DEFER for a
   * result this worker does not have (or under another token) is ignored. */
  defer(body: Body, now: number): Outcome[] {
    const retryMs = Math.max(50, num(body.retry_ms, 1000) || 1000);
    const first: Outcome[] = [];
    const entries = Array.isArray(body.results) ? body.results : [];
    for (const entry of entries) {
      if (!Array.isArray(entry) || entry.length !== 2 || !(entry[0] instanceof Uint8Array)) continue;
      const key = hex(entry[0]);
      const outcome = this.held.get(key)?.outcome ?? this.recent.get(key)?.outcome;
      if (outcome === undefined || outcome.kind !== "done" || BigInt(entry[1] as bigint | number) !== outcome.token) continue;
      if (!this.held.has(key)) first.push(outcome);
      this.held.set(key, { outcome, resendAt: now + retryMs, releaseAt: Infinity });
    }
    return first;
  }

  /** Held results whose retry time has come: send them now. */
  due(now: number): Outcome[] {
    const out: Outcome[] = [];
    for (const h of this.held.values()) {
      if (h.resendAt <= now) {
        h.resendAt = Infinity;
        h.releaseAt = now + this.quietMs;
        out.push(h.outcome);
      }
    }
    this.sent(out, now);
    return out;
  }

  /** Held results re-sent and met by no DEFER within `quietMs`: the broker stored them. */
  released(now: number): Outcome[] {
    const out: Outcome[] = [];
    for (const [key, h] of this.held) {
      if (h.releaseAt <= now) {
        this.held.delete(key);
        out.push(h.outcome);
      }
    }
    return out;
  }
}
