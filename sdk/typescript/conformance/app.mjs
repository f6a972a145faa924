// The conformance app (docs/protocol.md, "Conformance"): the workflows every worker
// implementation provides so tests/conformance can drive it. Side effects go to the file
// named by the payload's `marks`, one line each.
import { appendFileSync } from "node:fs";
import { defineWorkflow, Permanent } from "@shoal/worker";

const GROUP = "conf";

function mark(payload, line) {
  if (payload && payload.marks) appendFileSync(payload.marks, `${line}\n`);
}

function pause(seconds, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, seconds * 1000);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(signal.reason);
    }, { once: true });
  });
}

defineWorkflow("conf-echo", {
  worker: GROUP,
  handler: async (payload) => ({ echo: payload, impl: "typescript" }),
});

defineWorkflow("conf-fail-once", {
  worker: GROUP, retries: 2,
  handler: async (payload, step) => {
    if (step.attempt === 1) throw new Error("the first attempt fails");
    return { attempt: step.attempt };
  },
});

defineWorkflow("conf-permanent", {
  worker: GROUP, retries: 5,
  handler: async () => {
    throw new Permanent("permanently broken");
  },
});

defineWorkflow("conf-steps", {
  worker: GROUP, retries: 3,
  handler: async (payload, step) => {
    const first = await step.run("first", () => {
      mark(payload, "first-ran");
      return "A";
    });
    mark(payload, `after-first ${step.attempt}`);
    if (payload.hang && step.attempt === 1) await pause(600, step.signal); // killed here by the suite
    const second = await step.run("second", async () => "B");
    return { first, second, attempt: step.attempt };
  },
});

defineWorkflow("conf-sleep", {
  worker: GROUP,
  handler: async (payload, step) => {
    mark(payload, "run");
    await step.sleep("nap", payload.seconds);
    return { woke_ms: Date.now() };
  },
});

defineWorkflow("conf-slow", {
  worker: GROUP,
  handler: async (payload, step) => {
    mark(payload, `start ${payload.tag}`);
    await pause(payload.seconds, step.signal);
    mark(payload, `end ${payload.tag}`);
    return { tag: payload.tag };
  },
});

defineWorkflow("conf-fanout", {
  worker: GROUP,
  handler: async (payload, step) => {
    const inputs = Array.from({ length: payload.n }, (_, i) => ({ i }));
    const ids = await step.enqueueMany("children", "conf-echo", inputs);
    const values = await step.wait("all-done", ids);
    return { children: values.map((v) => v.echo.i) };
  },
});

defineWorkflow("conf-timeout", {
  worker: GROUP, retries: 0, timeout: 1,
  handler: async (payload, step) => {
    mark(payload, "start");
    try {
      await pause(payload.seconds, step.signal);
    } catch (err) {
      mark(payload, "stopped"); // the timeout aborted step.signal; the handler may clean up
      throw err;
    }
    mark(payload, "end");
    return { slept: payload.seconds };
  },
});
