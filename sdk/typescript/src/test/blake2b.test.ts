import { test } from "node:test";
import assert from "node:assert/strict";
import { blake2b } from "../blake2b.js";
import { childJobId } from "../protocol.js";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
/** Bytes (7i + 3) mod 256, i = 0..n-1: the inputs the expected values below were computed from. */
const bytes = (n: number) => Uint8Array.from({ length: n }, (_, i) => (i * 7 + 3) % 256);

test("BLAKE2b-512 of \"abc\" is RFC 7693's appendix A value", () => {
  assert.equal(hex(blake2b(Buffer.from("abc"))),
    "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d1" +
    "7d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923");
});

test("BLAKE2b-128 equals Python's hashlib.blake2b(digest_size=16) across block edges", () => {
  // computed with: hashlib.blake2b(bytes((i*7+3) % 256 for i in range(n)), digest_size=16).hexdigest()
  const expected: Record<number, string> = {
    0: "cae66941d9efbd404e4d88758ea67670",
    1: "71b186b851e866e71be237342976049a",
    127: "e00ab0ead4d729de8fbe7745d642e416",
    128: "8e0cf9bb1b36fa6c42aa6490f719b575",
    129: "6cefde50e4008690e61cf8225d101256",
    255: "b1bce9f0dc0bec101cd5e09b7961937c",
    256: "ac60b0f8b3227af67328401630cd4dfa",
    1000: "add263669b4eb2158678a360fa6f007a",
  };
  for (const [n, digest] of Object.entries(expected)) assert.equal(hex(blake2b(bytes(Number(n)), 16)), digest, `${n} bytes`);
});

test("the digest length is a parameter, not a cut of the 64-byte digest", () => {
  assert.equal(hex(blake2b(Buffer.from("abc"), 32)), "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319");
  assert.notEqual(hex(blake2b(Buffer.from("abc"), 16)), hex(blake2b(Buffer.from("abc"))).slice(0, 32));
  assert.throws(() => blake2b(new Uint8Array(0), 0), RangeError);
  assert.throws(() => blake2b(new Uint8Array(0), 65), RangeError);
});

test("a child's id is BLAKE2b-128 of parent id + UTF-8 step name + 4-byte big-endian index, as in Python", () => {
  // computed with shoal.worker.steps.child_job_id(bytes(range(16)), name, index).hex()
  const parent = Uint8Array.from({ length: 16 }, (_, i) => i);
  assert.equal(hex(childJobId(parent, "children", 0)), "3a730f83d55d7a5cce99a6fb9d2131e7");
  assert.equal(hex(childJobId(parent, "children", 2)), "af35a4392212b9baa89fe88ad53ac934");
  assert.equal(hex(childJobId(parent, "é✓", 7)), "d0b61c6bde8ab766e85423de4c58ff91");
  assert.equal(hex(childJobId(parent, "", 0)), "3c835e122005224a9c2d2b7898981d23");
  assert.equal(hex(childJobId(parent, "x".repeat(200), 70000)), "faf3f3d429f423a0f904b85bd1b2188d");
});
