/**
 * The part of shoal.toml a worker reads for itself, by the Python worker's rules (shoal.conf):
 * `[broker] bind`, `heartbeat_interval` and `max_step_bytes`, and the group's `concurrency`,
 * `grace`, `timeout`, `max_jobs`, `max_memory` and `nice`, each group key taken from the last of `[workflows]`,
 * `[workflows.<group>]`, `[servers.<server>.workflows]`, `[servers.<server>.workflows.<group>]`
 * that sets it. A bad value of a key read here is an error naming file, line and key; a key
 * this worker does not know is a warning (the broker and `shoal config --check` judge the rest).
 */
import { existsSync, readFileSync, statSync } from "node:fs";
import { resolve } from "node:path";
import { parse, TomlError } from "smol-toml";
import { describe, DURATION_HINT, parseDuration, parseSize } from "./durations.js";
import { connectable, isEndpoint } from "./endpoints.js";
import type { KeyPaths } from "./keys.js";
import { keyLines, type KeyLines } from "./tomllines.js";

/** A config file that cannot be used: every problem, one a line, each with its place. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

/** What the file says for one worker: only the keys it sets. */
export interface FileSettings {
  path: string;
  bind?: string;
  heartbeatS?: number;
  maxStepBytes?: number;
  concurrency?: number;
  graceS?: number;
  timeoutS?: number;
  maxJobs?: number;
  maxMemoryMb?: number;
  nice?: number;
  /** `[security] key` and `broker_public_key`: this program's CURVE key files, each with its place. */
  security: KeyPaths;
  /** Keys this worker does not know, each with its place. */
  warnings: string[];
}

type Check = (value: unknown) => unknown;
type Field = Exclude<keyof FileSettings, "path" | "warnings" | "security">;

const integer = (minimum: number, maximum?: number): Check => (value) => {
  const n = typeof value === "bigint" ? Number(value) : value;
  if (typeof n !== "number" || !Number.isInteger(n) || n < minimum || (maximum !== undefined && n > maximum)) {
    const expected = maximum === undefined ? `an integer >= ${minimum}` : `an integer from ${minimum} to ${maximum}`;
    throw new RangeError(`expected ${expected}, found ${describe(value)}`);
  }
  return n;
};
const duration = (positive: boolean): Check => (value) => {
  let seconds: number;
  try {
    seconds = parseDuration(value);
  } catch {
    throw new RangeError(`expected ${DURATION_HINT}, found ${describe(value)}`);
  }
  if (seconds < 0 || (positive && seconds === 0)) throw new RangeError(`expected a duration ${positive ? ">" : ">="} 0, found ${describe(value)}`);
  return seconds;
};
const size = (minimum: number): Check => (value) => {
  const bytes = parseSize(value);
  if (bytes < minimum) throw new RangeError(`expected a size like "16MiB" or a number of bytes >= ${minimum}, found ${describe(value)}`);
  return bytes;
};
/** Whole MiB, rounded up (a nonzero limit never becomes 0, "off"); a bare integer counts MiB. */
const sizeMib: Check = (value) => {
  try {
    return Math.ceil(parseSize(value, 2 ** 20) / 2 ** 20);
  } catch {
    throw new RangeError(`expected a size like "512MiB", "1GB" or a whole number of MiB, found ${describe(value)}`);
  }
};
const endpoint: Check = (value) => {
  if (!isEndpoint(value, true)) throw new RangeError(`expected a ZeroMQ endpoint like "tcp://127.0.0.1:5555", found ${describe(value)}`);
  return value;
};

// The keys read here, with the checks shoal.conf.checks applies to them.
const BROKER_READ: Record<string, [Field, Check]> = {
  bind: ["bind", endpoint],
  heartbeat_interval: ["heartbeatS", duration(true)],
  max_step_bytes: ["maxStepBytes", size(1)],
};
const GROUP_READ: Record<string, [Field, Check]> = {
  concurrency: ["concurrency", integer(1)],
  grace: ["graceS", duration(false)],
  timeout: ["timeoutS", duration(false)],
  max_jobs: ["maxJobs", integer(0)],
  max_memory: ["maxMemoryMb", sizeMib],
  nice: ["nice", integer(-20, 19)],
};
/** Every key shoal.toml knows (conf/checks.py; tests/test_typescript.py keeps the lists equal). */
export const KNOWN_BROKER_KEYS = ["bind", "data", "max_message_bytes", "max_step_bytes", "heartbeat_interval", "map_size",
  "max_size", "min_free_disk", "snapshot_interval", "snapshot_entries", "snapshot_keep", "supervise", "write_ahead", "spin", "events", "metrics", "insecure", "metrics_token"];
export const KNOWN_GROUP_KEYS = ["app", "workers", "max_workers", "concurrency", "retries", "backoff", "backoff_max",
  "idle_timeout", "lease", "grace", "timeout", "nice", "max_jobs", "max_memory", "retention", "rate", "max_pending", "starvation"];
export const KNOWN_SECURITY_KEYS = ["broker_secret_key", "clients", "admins", "key", "broker_public_key"];
export const TOP_LEVEL_TABLES = ["broker", "workflows", "servers", "cron", "rates", "security"];

type Table = Record<string, unknown>;
type Values = Partial<Record<Field, unknown>>;

const isTable = (value: unknown): value is Table =>
  value !== null && typeof value === "object" && !Array.isArray(value) && !(value instanceof Date);

/** The file to read: `flag` (--config), else SHOAL_CONFIG, else ./shoal.toml when present, else none. */
export function findConfig(flag: string | undefined, env: Record<string, string | undefined>, cwd: string): string | null {
  const [path, origin] = flag ? [flag, "--config"] : env.SHOAL_CONFIG ? [env.SHOAL_CONFIG, "SHOAL_CONFIG"] : [null, ""];
  if (path === null) {
    const local = resolve(cwd, "shoal.toml");
    return existsSync(local) && statSync(local).isFile() ? local : null;
  }
  // a file named on purpose must exist: running on defaults would hide the typo
  if (!existsSync(resolve(cwd, path))) throw new ConfigError(`${path}: config file not found (named by ${origin})`);
  if (!statSync(resolve(cwd, path)).isFile()) throw new ConfigError(`${path}: not a file (named by ${origin})`);
  return path;
}

/** Read `path` for a worker of `group` on `server`. */
export function readConfig(path: string, group: string, server: string, cwd = process.cwd()): FileSettings {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(readFileSync(resolve(cwd, path)));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ConfigError(`${path}: ${code ? `cannot read: ${code}` : "not UTF-8 text, which TOML requires"}`);
  }
  let doc: Table;
  try {
    doc = parse(text) as Table;
  } catch (err) {
    if (!(err instanceof TomlError)) throw err;
    throw new ConfigError(`${path}:${err.line}: invalid TOML: ${err.message.split("\n")[0].replace(/^Invalid TOML document: /, "")}`);
  }
  return new Reader(path, keyLines(text)).read(doc, group, server);
}

/** Walks a parsed file: checks the keys read here wherever they are, collects every problem. */
class Reader {
  private readonly problems: string[] = [];
  private readonly warnings: string[] = [];

  constructor(private readonly path: string, private readonly lines: KeyLines) {}

  read(doc: Table, group: string, server: string): FileSettings {
    let broker: Values = {};
    let workflows = { keys: {} as Values, groups: {} as Record<string, Values> };
    let here = { keys: {} as Values, groups: {} as Record<string, Values> };
    let security: KeyPaths = {};
    for (const [name, value] of Object.entries(doc)) {
      if (!TOP_LEVEL_TABLES.includes(name)) this.warn([name], "unknown table");
      else if (!isTable(value)) this.problem([name], `expected a table [${name}], found ${describe(value)}`);
      else if (name === "broker") broker = this.keys(value, ["broker"], BROKER_READ, KNOWN_BROKER_KEYS);
      else if (name === "workflows") workflows = this.workflows(value, ["workflows"]);
      else if (name === "servers") here = this.servers(value, server) ?? here;
      else if (name === "security") security = this.security(value);
    }
    if (this.problems.length) throw new ConfigError(this.problems.join("\n"));
    const layers = [workflows.keys, workflows.groups[group] ?? {}, here.keys, here.groups[group] ?? {}];
    const settings: FileSettings = { path: this.path, warnings: this.warnings, security, ...broker, ...Object.assign({}, ...layers) };
    if (settings.bind !== undefined) settings.bind = connectable(settings.bind);
    return settings;
  }

  private at(keys: string[]): string {
    const line = this.lines(keys);
    return `${this.path}${line ? `:${line}` : ""}: ${keys.join(".")}`;
  }

  private problem(keys: string[], message: string): void {
    this.problems.push(`${this.at(keys)}: ${message}`);
  }

  private warn(keys: string[], message: string): void {
    this.warnings.push(`${this.at(keys)}: ${message}; the Shoal broker and \`shoal config --check\` refuse it`);
  }

  private keys(table: Table, path: string[], read: Record<string, [Field, Check]>, known: string[]): Values {
    const values: Values = {};
    for (const [key, value] of Object.entries(table)) {
      const spec = read[key];
      if (spec === undefined) {
        if (!known.includes(key)) this.warn([...path, key], "unknown key");
        continue;
      }
      try {
        values[spec[0]] = spec[1](value);
      } catch (err) {
        this.problem([...path, key], (err as Error).message);
      }
    }
    return values;
  }

  private workflows(table: Table, path: string[]): { keys: Values; groups: Record<string, Values> } {
    // TOML cannot hold a table and a value under one name, so the type tells groups from keys
    const plain = Object.fromEntries(Object.entries(table).filter(([, v]) => !isTable(v)));
    const groups: Record<string, Values> = {};
    for (const [name, value] of Object.entries(table)) {
      if (isTable(value)) groups[name] = this.keys(value, [...path, name], GROUP_READ, KNOWN_GROUP_KEYS);
    }
    return { keys: this.keys(plain, path, GROUP_READ, KNOWN_GROUP_KEYS), groups };
  }

  /** `[security]`: this program's own key files; the broker's keys (and `[security.workers]`) are only known here. */
  private security(table: Table): KeyPaths {
    const found: KeyPaths = {};
    for (const [key, value] of Object.entries(table)) {
      if (key === "workers" && isTable(value)) continue; // the broker's allow-lists
      if (!KNOWN_SECURITY_KEYS.includes(key)) {
        this.warn(["security", key], "unknown key");
      } else if (key === "key" || key === "broker_public_key") {
        if (typeof value !== "string" || !value.trim()) this.problem(["security", key], `expected a non-empty string, found ${describe(value)}`);
        else found[key === "key" ? "key" : "brokerKey"] = { path: value, origin: this.at(["security", key]) };
      }
    }
    return found;
  }

  /** Every server's blocks are checked (a typo shows wherever the file loads); `server`'s are returned. */
  private servers(table: Table, server: string): { keys: Values; groups: Record<string, Values> } | undefined {
    let found;
    for (const [name, block] of Object.entries(table)) {
      if (!isTable(block)) {
        this.problem(["servers", name], `expected a table [servers.${name}], found ${describe(block)}`);
        continue;
      }
      for (const [key, value] of Object.entries(block)) {
        if (key !== "workflows") this.warn(["servers", name, key], "unknown key");
        else if (!isTable(value)) this.problem(["servers", name, key], `expected a table, found ${describe(value)}`);
        else if (name === server) found = this.workflows(value, ["servers", name, "workflows"]);
        else this.workflows(value, ["servers", name, "workflows"]);
      }
    }
    return found;
  }
}
