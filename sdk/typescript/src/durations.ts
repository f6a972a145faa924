/**
 * Durations and sizes as people write them in shoal.toml, read the way `shoal.conf.durations`
 * reads them: `"250ms"`, `"1.5s"`, `"5m"`, `"1h"`, `"1d"` or a number of seconds; `"16MiB"`,
 * `"1GB"` (decimal and binary units both) or a number of bytes.
 */

export const DURATION_HINT = 'a duration like "60s", "5m", "1h" or seconds';
const DURATION_UNITS_S: Record<string, number> = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400 };
const NUMBER = String.raw`(\d+(?:\.\d*)?|\.\d+)`;
const DURATION = new RegExp(String.raw`^\s*${NUMBER}\s*(ms|s|m|h|d)?\s*$`);
const SIZE_UNITS: Record<string, number> = {
  b: 1, kb: 1e3, mb: 1e6, gb: 1e9, tb: 1e12, kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30, tib: 2 ** 40,
};
const SIZE = new RegExp(String.raw`^\s*${NUMBER}\s*([kmgt]i?b|b)\s*$`, "i");

/** Seconds in `value` (a number of seconds, or text with a unit); throws a RangeError saying what was expected. */
export function parseDuration(value: unknown): number {
  let seconds = NaN;
  if (typeof value === "number") seconds = value;
  else if (typeof value === "bigint") seconds = Number(value);
  else if (typeof value === "string") {
    const found = DURATION.exec(value);
    if (found) seconds = Number(found[1]) * DURATION_UNITS_S[found[2] ?? "s"];
  }
  if (!Number.isFinite(seconds)) throw new RangeError(`expected ${DURATION_HINT}, found ${describe(value)}`);
  return seconds;
}

/** Bytes in `value`: text like "16MiB" (fractions of a byte dropped), or a whole number >= 0 counted in `bareUnit` bytes. */
export function parseSize(value: unknown, bareUnit = 1): number {
  const expected = `expected a size like "16MiB" or a number of bytes, found ${describe(value)}`;
  if (typeof value === "number" || typeof value === "bigint") {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 0) throw new RangeError(expected);
    return n * bareUnit;
  }
  const found = typeof value === "string" ? SIZE.exec(value) : null;
  if (!found) throw new RangeError(expected);
  return Math.floor(Number(found[1]) * SIZE_UNITS[found[2].toLowerCase()]);
}

/** A found value as it would be written in TOML: strings quoted, `true`, `a table`. */
export function describe(value: unknown): string {
  if (typeof value === "string" || Array.isArray(value)) {
    const shown = JSON.stringify(value);
    return shown.length <= 60 ? shown : `${shown.slice(0, 57)}...`;
  }
  if (value !== null && typeof value === "object" && !(value instanceof Date)) return "a table";
  return String(value);
}
