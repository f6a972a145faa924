/**
 * Requests from handlers to the broker (STEP), matched to replies by request id. A request
 * unanswered for `resendMs` is sent again: the broker stores a step once and answers a
 * repeat with the stored record, so repeating is safe.
 */
import { encode, num, type Body } from "./protocol.js";
import { RemoteError } from "./step.js";

interface Open {
  frames: Buffer[];
  sentAt: number;
  deadline: number;
  resolve: (body: Body) => void;
  reject: (err: Error) => void;
}

export class Calls {
  private readonly open = new Map<number, Open>();
  private nextRid = 1;

  constructor(private readonly send: (frames: Buffer[]) => void, private readonly resendMs = 2000,
              private readonly timeoutMs = 60_000) {}

  call(command: string, body: Body, now: number): Promise<Body> {
    const rid = this.nextRid++;
    const frames = encode(command, { ...body, rid });
    return new Promise((resolve, reject) => {
      this.open.set(rid, { frames, sentAt: now, deadline: now + this.timeoutMs, resolve, reject });
      this.send(frames);
    });
  }

  /** Re-send what is unanswered for `resendMs`; fail what is unanswered past its deadline. */
  tick(now: number): void {
    for (const [rid, entry] of this.open) {
      if (now >= entry.deadline) {
        this.open.delete(rid);
        entry.reject(new Error(`no answer from the broker within ${this.timeoutMs / 1000}s`));
      } else if (now - entry.sentAt >= this.resendMs) {
        entry.sentAt = now;
        this.send(entry.frames);
      }
    }
  }

  /** A REPLY or ERROR with a `rid`: settle its request (a repeat answer is ignored). */
  answer(command: string, body: Body): void {
    const rid = num(body.rid, -1);
    const entry = this.open.get(rid);
    if (entry === undefined) return;
    this.open.delete(rid);
    if (command === "REPLY") entry.resolve(body);
    else entry.reject(new RemoteError(String(body.code), String(body.message)));
  }
}
