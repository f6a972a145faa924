import { test } from "node:test";
import assert from "node:assert/strict";
import { Backoff } from "../backoff.js";
import { Outbox, type Outcome } from "../outbox.js";

test("reconnect delays double up to the maximum, and reset", () => {
  const b = new Backoff(1000, 8000);
  assert.deepEqual([b.next(), b.next(), b.next(), b.next(), b.next()], [1000, 2000, 4000, 8000, 8000]);
  b.reset();
  assert.equal(b.next(), 1000);
  assert.throws(() => new Backoff(0, 10), RangeError);
});

function done(n: number, token: bigint): Outcome {
  const id = new Uint8Array(16);
  id[15] = n;
  return { id, token, workflow: "w", kind: "done", value: new Uint8Array([0xc0]), durationMs: 1 };
}

test("recent outcomes are re-sent after a reconnect until past the horizon", () => {
  const box = new Outbox(5000, 2000);
  box.heard(0);
  box.sent([done(1, 11n)], 0);
  box.sent([done(2, 22n)], 4000);
  assert.equal(box.toResend(4500).length, 2);
  box.heard(7000);
  assert.deepEqual(box.toResend(7000).map((o) => o.token), [22n], "the one sent well before the broker was heard is dropped");
});

test("a deferred result is held, re-sent, and let go after a quiet interval", () => {
  const box = new Outbox(5000, 2000);
  const o = done(3, 33n);
  box.sent([o], 0);
  assert.equal(box.defer({ results: [[o.id, 99n]], retry_ms: 500 }, 0).length, 0, "another token: ignored");
  assert.equal(box.defer({ results: [[o.id, 33n]], retry_ms: 500 }, 0).length, 1);
  assert.equal(box.due(100).length, 0);
  assert.equal(box.due(600).length, 1);
  assert.equal(box.released(1000).length, 0);
  assert.deepEqual(box.released(2700).map((x) => x.token), [33n]);
  assert.equal(box.held.size, 0);
});
