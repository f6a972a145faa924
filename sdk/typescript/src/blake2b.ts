/**
 * BLAKE2b (RFC 7693), unkeyed, with any digest length from 1 to 64 bytes.
 *
 * Node's crypto offers BLAKE2b only with a 64-byte digest, and BLAKE2b-128 is not a prefix of
 * BLAKE2b-512 (the digest length is part of the parameter block), so child job ids, which the
 * Python worker makes with `hashlib.blake2b(..., digest_size=16)`, need this. Words are BigInts
 * masked to 64 bits: slower than 32-bit pairs, but inputs here are a few dozen bytes.
 */

const MASK = (1n << 64n) - 1n;
const BLOCK = 128;

// The SHA-512 initial hash values, as RFC 7693 section 2.6 takes them.
const IV = [
  0x6a09e667f3bcc908n, 0xbb67ae8584caa73bn, 0x3c6ef372fe94f82bn, 0xa54ff53a5f1d36f1n,
  0x510e527fade682d1n, 0x9b05688c2b3e6c1fn, 0x1f83d9abfb41bd6bn, 0x5be0cd19137e2179n,
];

// The message word schedule of each round (section 2.7); rounds 10 and 11 repeat 0 and 1.
const SIGMA = [
  [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
  [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
  [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
  [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
  [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
  [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
  [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
  [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
  [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
  [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
];

const rotr = (x: bigint, n: bigint): bigint => ((x >> n) | (x << (64n - n))) & MASK;

function mix(v: bigint[], a: number, b: number, c: number, d: number, x: bigint, y: bigint): void {
  v[a] = (v[a] + v[b] + x) & MASK;
  v[d] = rotr(v[d] ^ v[a], 32n);
  v[c] = (v[c] + v[d]) & MASK;
  v[b] = rotr(v[b] ^ v[c], 24n);
  v[a] = (v[a] + v[b] + y) & MASK;
  v[d] = rotr(v[d] ^ v[a], 16n);
  v[c] = (v[c] + v[d]) & MASK;
  v[b] = rotr(v[b] ^ v[c], 63n);
}

/** The compression function F (section 3.2) on one 128-byte block; `counted` is bytes so far. */
function compress(h: bigint[], block: Uint8Array, counted: number, last: boolean): void {
  const view = new DataView(block.buffer, block.byteOffset, BLOCK);
  const m = Array.from({ length: 16 }, (_, i) => view.getBigUint64(i * 8, true));
  const v = [...h, ...IV];
  const t = BigInt(counted);
  v[12] ^= t & MASK;
  v[13] ^= t >> 64n;
  if (last) v[14] ^= MASK;
  for (let round = 0; round < 12; round++) {
    const s = SIGMA[round % 10];
    mix(v, 0, 4, 8, 12, m[s[0]], m[s[1]]);
    mix(v, 1, 5, 9, 13, m[s[2]], m[s[3]]);
    mix(v, 2, 6, 10, 14, m[s[4]], m[s[5]]);
    mix(v, 3, 7, 11, 15, m[s[6]], m[s[7]]);
    mix(v, 0, 5, 10, 15, m[s[8]], m[s[9]]);
    mix(v, 1, 6, 11, 12, m[s[10]], m[s[11]]);
    mix(v, 2, 7, 8, 13, m[s[12]], m[s[13]]);
    mix(v, 3, 4, 9, 14, m[s[14]], m[s[15]]);
  }
  for (let i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

/** BLAKE2b of `data` with a `digestBytes`-byte digest (1 to 64; default 64), no key. */
export function blake2b(data: Uint8Array, digestBytes = 64): Uint8Array {
  if (!(Number.isInteger(digestBytes) && digestBytes >= 1 && digestBytes <= 64)) {
    throw new RangeError(`a BLAKE2b digest is 1 to 64 bytes, not ${digestBytes}`);
  }
  const h = [...IV];
  h[0] ^= 0x01010000n ^ BigInt(digestBytes); // parameter block: fanout 1, depth 1, no key
  // every full block but the last is compressed as it comes; the last (maybe empty) is padded
  let offset = 0;
  while (data.length - offset > BLOCK) {
    compress(h, data.subarray(offset, offset + BLOCK), offset + BLOCK, false);
    offset += BLOCK;
  }
  const tail = new Uint8Array(BLOCK);
  tail.set(data.subarray(offset));
  compress(h, tail, data.length, true);
  const out = new Uint8Array(64);
  const view = new DataView(out.buffer);
  h.forEach((word, i) => view.setBigUint64(i * 8, word, true));
  return out.slice(0, digestBytes);
}
