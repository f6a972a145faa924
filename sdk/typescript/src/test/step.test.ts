import { test } from "node:test";
import assert from "node:assert/strict";
import { idToStr, newJobId, packValue, type Body } from "../protocol.js";
import { Permanent } from "../registry.js";
import { Cancelled, ChildFailed, LeaseLost, RemoteError, Step, StepError, StepTimeout, Suspend, type Channel, type JobMessage } from "../step.js";

/** A channel that answers STEP as the broker does: the first record stored for a name wins. */
class Store implements Channel {
  readonly sent: Body[] = [];
  readonly records = new Map<string, Body>();
  refuse: RemoteError | null = null;
  async call(command: string, body: Body): Promise<Body> {
    assert.equal(command, "STEP");
    this.sent.push(body);
    if (this.refuse) throw this.refuse;
    const name = body.name as string;
    if (!this.records.has(name)) this.records.set(name, { ...(body.record as Body), finished_ms: Date.now() });
    return { rid: 1, record: this.records.get(name) };
  }
}

function job(steps: Record<string, Body> = {}, attempt = 1): JobMessage {
  return { id: newJobId(), token: 2n ** 61n, wf: "w", payload: packValue(null), attempt, maxRetries: 3, steps };
}

test("step.run stores the value (STEP with id, token, name, record) and returns it", async () => {
  const store = new Store();
  const step = new Step(job(), store);
  assert.deepEqual(await step.run("a", async () => ({ n: 1 })), { n: 1 });
  const body = store.sent[0];
  assert.equal(body.name, "a");
  assert.equal(body.token, 2n ** 61n);
  assert.ok((body.record as Body).value instanceof Uint8Array);
  assert.equal((body.record as Body).attempts, 1);
});

test("a stored step answers without running its body", async () => {
  let ran = 0;
  const step = new Step(job({ a: { value: packValue("stored") } }), new Store());
  assert.equal(await step.run("a", () => { ran += 1; return "fresh"; }), "stored");
  assert.equal(ran, 0);
});

test("a step name is used once per run; results must encode", async () => {
  const step = new Step(job(), new Store());
  await step.run("a", () => 1);
  await assert.rejects(step.run("a", () => 2), StepError);
  await assert.rejects(step.run("f", () => Symbol("no")), StepError);
  const small = new Step(job(), new Store(), 8);
  await assert.rejects(small.run("big", () => "x".repeat(100)), /over the limit of 8/);
});

test("in-step retries, then a Permanent failure is stored and thrown again later", async () => {
  let tries = 0;
  const store = new Store();
  const step = new Step(job(), store);
  assert.equal(await step.run("flaky", () => { tries += 1; if (tries < 3) throw new Error("no"); return "ok"; }, { retries: 2, backoff: 0.001 }), "ok");
  assert.equal((store.records.get("flaky") as Body).attempts, 3);
  await assert.rejects(step.run("bad", () => { throw new Permanent("never"); }), Permanent);
  assert.equal((store.records.get("bad") as Body).permanent, true);
  const later = new Step(job({ bad: store.records.get("bad") as Body }), new Store());
  await assert.rejects(later.run("bad", () => "fine"), /never/);
});

test("sleep suspends until its wake time, then goes on", async () => {
  const step = new Step(job(), new Store());
  await assert.rejects(step.sleep("nap", 60), (err: Error) => err instanceof Suspend && err.dueMs > Date.now());
  assert.ok(step.ended instanceof Suspend, "the run knows it suspended, even if the handler swallows it");
  const woke = new Step(job({ nap: { wake_ms: Date.now() - 1 } }), new Store());
  await woke.sleep("nap", 60);
  assert.equal(woke.ended, null);
});

test("enqueue sends child items once; wait suspends on them, then returns their values", async () => {
  const store = new Store();
  const parent = job();
  const step = new Step(parent, store);
  const ids = await step.enqueueMany("kids", "child", [{ i: 0 }, { i: 1 }], { group: "g" });
  const items = store.sent[0].enqueue as Body[];
  assert.deepEqual(items.map((i) => idToStr(i.id as Uint8Array)), ids);
  assert.equal(items[0].group, "g");
  await assert.rejects(step.wait("all", ids), (err: Error) => err instanceof Suspend && err.waitOn.length === 2);
  const children = ids.map((id, i) => [Buffer.from(id.replace(/-/g, ""), "hex"), "completed", packValue(i * 10), null]);
  const resumed = new Step(job({ kids: store.records.get("kids") as Body, all: { children } }), new Store());
  assert.deepEqual(await resumed.enqueueMany("kids", "child", [{ i: 0 }, { i: 1 }]), ids);
  assert.deepEqual(await resumed.wait("all", ids), [0, 10]);
  const failed = new Step(job({ all: { children: [[children[0][0], "dead", null, "boom"]] } }), new Store());
  await assert.rejects(failed.wait("all", ids[0]), ChildFailed);
  const late = new Step(job({ all: { deadline_ms: Date.now() - 1 } }), new Store());
  await assert.rejects(late.wait("all", ids), StepTimeout);
});

test("a cancelled run stops at its next step; a stale lease ends it", async () => {
  const step = new Step(job(), new Store());
  step.cancel();
  assert.ok(step.signal.aborted && step.cancelled);
  await assert.rejects(step.run("a", () => 1), Cancelled);
  const store = new Store();
  store.refuse = new RemoteError("stale_lease", "this run no longer holds the job's lease");
  const lost = new Step(job(), store);
  await assert.rejects(lost.run("a", () => 1), LeaseLost);
  assert.ok(lost.ended instanceof LeaseLost);
});

test("a timed-out run aborts step.signal and stores no step after it", async () => {
  const store = new Store();
  const step = new Step(job(), store);
  let release: () => void = () => {};
  const running = step.run("slow", () => new Promise<string>((resolve) => { release = () => resolve("late"); }));
  const err = step.timeOut(0.5);
  assert.equal(err.message, "timed out after 0.5s");
  assert.ok(step.cancelled && step.signal.aborted && step.signal.reason === err);
  release();
  await assert.rejects(running, /timed out after 0.5s/); // the late value is not stored
  await assert.rejects(step.run("next", () => 1), /timed out/);
  assert.equal(store.sent.length, 0);
  assert.equal(step.ended, err);
});
