/**
 * The wire format (see docs/protocol.md): three frames `[version, command, msgpack body]`.
 *
 * Bodies are msgpack maps. Lease tokens are 62-bit integers, past what a JS number holds
 * exactly, so frames are decoded with 64-bit integers as `bigint`; user values (payloads,
 * results, step values) travel packed inside a `bin` field and are decoded on their own.
 */
import { Decoder, Encoder } from "@msgpack/msgpack";
import { randomBytes } from "node:crypto";
import { blake2b } from "./blake2b.js";

export const VERSION = "SHOAL1";
export const DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

export const Command = {
  // client -> broker
  ENQUEUE: "ENQUEUE", GET: "GET", WAIT: "WAIT", CANCEL: "CANCEL",
  // worker -> broker
  HELLO: "HELLO", READY: "READY", DONE: "DONE", FAIL: "FAIL", RETURN: "RETURN", STEP: "STEP",
  SUSPEND: "SUSPEND", HEARTBEAT: "HEARTBEAT", BYE: "BYE",
  // broker -> peer
  REPLY: "REPLY", ERROR: "ERROR", JOB: "JOB", RECONNECT: "RECONNECT", DEFER: "DEFER",
} as const;

/** Error codes the broker puts in ERROR bodies (the ones a worker or client acts on). */
export const E_STALE_LEASE = "stale_lease";
export const E_BAD_REQUEST = "bad_request";
export const E_UNKNOWN_JOB = "unknown_job";
export const E_FORBIDDEN = "forbidden";

export type Body = Record<string, unknown>;

// With useBigInt64 the encoder writes a bigint as a 64-bit integer but a number past 32 bits as
// a float64 (a wall time in ms would reach Python as 1.7e12, not an int): `wide` turns such
// numbers into bigints first. Decoding gives bigint for every 64-bit integer; `narrow` makes
// the safe ones numbers again for user values (a lease token stays a bigint in frames).
const encoder = new Encoder({ useBigInt64: true, ignoreUndefined: true });
const decoder = new Decoder({ useBigInt64: true });

function wide(value: unknown): unknown {
  if (typeof value === "number") {
    return Number.isSafeInteger(value) && (value >= 0x100000000 || value < -0x80000000) ? BigInt(value) : value;
  }
  if (value === null || typeof value !== "object" || value instanceof Uint8Array) return value;
  if (Array.isArray(value)) return value.map(wide);
  if (value instanceof Map) return new Map([...value].map(([k, v]) => [wide(k), wide(v)]));
  if (value instanceof Date) return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) out[k] = wide(v);
  return out;
}

function narrow(value: unknown): unknown {
  if (typeof value === "bigint") {
    return value <= BigInt(Number.MAX_SAFE_INTEGER) && value >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(value) : value;
  }
  if (value === null || typeof value !== "object" || value instanceof Uint8Array) return value;
  if (Array.isArray(value)) return value.map(narrow);
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) out[k] = narrow(v);
  return out;
}

/** The frames of one message. */
export function encode(command: string, body: Body): Buffer[] {
  return [Buffer.from(VERSION), Buffer.from(command), Buffer.from(encoder.encode(wide(body)))];
}

/** A message that could not be read: `reason` says why (the peer logs it and goes on). */
export class ProtocolError extends Error {}

/** Parse `[version, command, body]`; any flaw throws `ProtocolError`. */
export function decode(frames: Uint8Array[], maxBytes = DEFAULT_MAX_MESSAGE_BYTES): [string, Body] {
  if (frames.length !== 3) throw new ProtocolError(`expected 3 frames [version, command, body], got ${frames.length}`);
  const [version, command, body] = frames;
  if (Buffer.from(version).toString("latin1") !== VERSION) {
    throw new ProtocolError(`unknown protocol version ${JSON.stringify(Buffer.from(version.subarray(0, 32)).toString("latin1"))}`);
  }
  if (body.length > maxBytes) throw new ProtocolError(`message body of ${body.length} bytes is over ${maxBytes}`);
  let value: unknown;
  try {
    value = decoder.decode(body);
  } catch (err) {
    throw new ProtocolError(`malformed msgpack body: ${(err as Error).message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value) || value instanceof Uint8Array) {
    throw new ProtocolError("a message body must be a map");
  }
  return [Buffer.from(command).toString("latin1"), value as Body];
}

/** Pack a user value (payload, result, step value) the way Python's side does: bin for bytes,
 * integers as integers (a bigint too). */
export function packValue(value: unknown): Uint8Array {
  return encoder.encode(wide(value === undefined ? null : value));
}

/** Unpack a user value; bytes come back as `Uint8Array`, integers past 2^53 as `bigint`. */
export function unpackValue(data: Uint8Array): unknown {
  return narrow(decoder.decode(data));
}

/** A field as a number (64-bit integers arrive as bigint). */
export function num(value: unknown, fallback = 0): number {
  if (typeof value === "bigint") return Number(value);
  if (typeof value === "number") return value;
  return fallback;
}

/** A lease token as a bigint, whichever width msgpack used for it. */
export function token(value: unknown): bigint {
  if (typeof value === "bigint") return value;
  if (typeof value === "number" && Number.isInteger(value)) return BigInt(value);
  throw new ProtocolError(`a lease token must be an integer, got ${typeof value}`);
}

/** Bytes of a `bin` field (a 16-byte job id, a packed value). */
export function bytes(value: unknown, what: string): Uint8Array {
  if (value instanceof Uint8Array) return value;
  throw new ProtocolError(`${what} must be bytes, got ${typeof value}`);
}

/** The text form of a job id users see: 8-4-4-4-12 hex (as Python's `id_to_str`). */
export function idToStr(id: Uint8Array): string {
  const h = Buffer.from(id).toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Parse a job id given as text (or pass 16 raw bytes through). */
export function idFromStr(text: string | Uint8Array): Uint8Array {
  if (text instanceof Uint8Array) {
    if (text.length !== 16) throw new Error(`a job id is 16 bytes, got ${text.length}`);
    return text;
  }
  const hex = text.replace(/-/g, "");
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new Error(`not a job id: ${JSON.stringify(text)}`);
  return new Uint8Array(Buffer.from(hex, "hex"));
}

let lastMs = 0;
let counter = 0;

/** A new job id: UUIDv7 layout (48-bit Unix ms, a 12-bit counter, random bits), time-ordered. */
export function newJobId(): Uint8Array {
  let now = Date.now();
  if (now <= lastMs) {
    counter += 1;
    if (counter > 0xfff) {
      lastMs += 1;
      counter = 0;
    }
    now = lastMs;
  } else {
    lastMs = now;
    counter = 0;
  }
  const id = new Uint8Array(16);
  const rand = randomBytes(8);
  for (let i = 0; i < 6; i++) id[i] = Math.floor(now / 2 ** (8 * (5 - i))) & 0xff;
  id[6] = 0x70 | ((counter >> 8) & 0x0f);
  id[7] = counter & 0xff;
  id[8] = 0x80 | (rand[0] & 0x3f);
  id.set(rand.subarray(1), 9);
  return id;
}

/**
 * A child's id is fixed by its parent, step name and index, so a re-run re-sends the same job:
 * BLAKE2b-128 of parent id + UTF-8 name + 4-byte big-endian index, exactly as the Python worker
 * makes it (docs/protocol.md, "Children"), so a job may move between the two mid-fan-out.
 */
export function childJobId(parent: Uint8Array, stepName: string, index: number): Uint8Array {
  const name = Buffer.from(stepName, "utf8");
  const input = new Uint8Array(parent.length + name.length + 4);
  input.set(parent);
  input.set(name, parent.length);
  new DataView(input.buffer).setUint32(parent.length + name.length, index, false);
  return blake2b(input, 16);
}

/** A stable Map key for a job id. */
export function hex(id: Uint8Array): string {
  return Buffer.from(id).toString("hex");
}
