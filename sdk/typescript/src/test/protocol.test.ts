import { test } from "node:test";
import assert from "node:assert/strict";
import { childJobId, Command, decode, encode, idFromStr, idToStr, newJobId, packValue, ProtocolError, unpackValue, VERSION } from "../protocol.js";

test("a frame is [version, command, msgpack map] and decodes back", () => {
  const frames = encode(Command.HELLO, { group: "media", slots: 4, running: [[new Uint8Array(16), 2n ** 61n + 5n]] });
  assert.equal(frames.length, 3);
  assert.equal(frames[0].toString(), VERSION);
  const [command, body] = decode(frames);
  assert.equal(command, "HELLO");
  assert.equal(body.group, "media");
  assert.equal(body.slots, 4);
  assert.equal((body.running as unknown[][])[0][1], 2n ** 61n + 5n); // a 62-bit lease token survives exactly
});

test("integers past 32 bits are written as integers, never floats", () => {
  const [, frameBody] = decode(encode(Command.SUSPEND, { due_ms: 1764590000123 }));
  assert.equal(frameBody.due_ms, 1764590000123n);
  const packed = packValue({ t: 1764590000123, neg: -(2 ** 40), small: 7, f: 1.5 });
  assert.equal(packValue(1764590000123)[0], 0xcf, "uint 64, not float 64");
  assert.equal(packValue(-(2 ** 40))[0], 0xd3, "int 64");
  assert.deepEqual(unpackValue(packed), { t: 1764590000123, neg: -(2 ** 40), small: 7, f: 1.5 });
});

test("user values round-trip bytes, text, nesting; huge integers come back as bigint", () => {
  const value = { s: "héllo ✓", b: new Uint8Array([0, 255]), l: [1, null, true], m: { k: "v" }, big: 2n ** 62n };
  assert.deepEqual(unpackValue(packValue(value)), value);
  assert.equal(unpackValue(packValue(undefined)), null);
});

test("a bad frame is refused with a reason", () => {
  assert.throws(() => decode([Buffer.from("SHOAL1"), Buffer.from("JOB")]), ProtocolError);
  assert.throws(() => decode([Buffer.from("SHOAL9"), Buffer.from("JOB"), Buffer.from(packValue({}))]), /unknown protocol version/);
  assert.throws(() => decode([Buffer.from("SHOAL1"), Buffer.from("JOB"), Buffer.from([0xc1])]), /malformed msgpack/);
  assert.throws(() => decode([Buffer.from("SHOAL1"), Buffer.from("JOB"), Buffer.from(packValue([1, 2]))]), /must be a map/);
});

test("job ids: text form as Python's id_to_str, time-ordered, version 7", () => {
  const a = newJobId();
  const b = newJobId();
  assert.equal(a.length, 16);
  assert.equal(a[6] >> 4, 7);
  assert.equal(a[8] >> 6, 2);
  assert.ok(Buffer.compare(Buffer.from(a), Buffer.from(b)) < 0, "ids of one process increase");
  const text = idToStr(a);
  assert.match(text, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  assert.deepEqual(idFromStr(text), a);
  assert.throws(() => idFromStr("nope"), /not a job id/);
});

test("a child's id depends on its parent, step and index only", () => {
  const parent = newJobId();
  assert.deepEqual(childJobId(parent, "fan", 0), childJobId(parent, "fan", 0));
  assert.notDeepEqual(childJobId(parent, "fan", 0), childJobId(parent, "fan", 1));
  assert.notDeepEqual(childJobId(parent, "fan", 0), childJobId(parent, "other", 0));
});
