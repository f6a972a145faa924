import { test, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { allWorkflows, clearWorkflows, defineWorkflow, Permanent, workflowsOf } from "../registry.js";

beforeEach(() => clearWorkflows());

test("every defineWorkflow call registers, exported or not, by group", () => {
  const wf = defineWorkflow<{ key: string }>("process-image", { worker: "media", retries: 4, handler: async (p) => p.key });
  defineWorkflow("thumbnail", { worker: "media", handler: async () => 1 });
  defineWorkflow("mail", { handler: async () => 2 });
  assert.equal(wf.name, "process-image");
  assert.equal(wf.retries, 4);
  assert.deepEqual([...workflowsOf("media").keys()].sort(), ["process-image", "thumbnail"]);
  assert.deepEqual([...workflowsOf("default").keys()], ["mail"]);
  assert.equal(allWorkflows().size, 3);
});

test("the registry is one per process, shared through globalThis", () => {
  defineWorkflow("shared", { handler: async () => 0 });
  const reg = (globalThis as unknown as Record<symbol, Map<string, unknown>>)[Symbol.for("shoal.worker.workflows")];
  assert.ok(reg.has("shared"));
});

test("bad definitions are refused with the reason", () => {
  assert.throws(() => defineWorkflow("", { handler: async () => 0 }), /non-empty string/);
  assert.throws(() => defineWorkflow("x", {} as never), /needs a handler/);
  assert.throws(() => defineWorkflow("x", { retries: -1, handler: async () => 0 }), /retries/);
  defineWorkflow("twice", { handler: async () => 0 });
  assert.throws(() => defineWorkflow("twice", { handler: async () => 1 }), /defined twice/);
});

test("Permanent is an Error with its own name", () => {
  const err = new Permanent("no");
  assert.ok(err instanceof Error);
  assert.equal(err.name, "Permanent");
});
