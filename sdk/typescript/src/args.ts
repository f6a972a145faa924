/**
 * The `shoal-worker` command line. Each setting is taken from the first of: its flag, its
 * environment variable, shoal.toml (`--config`, SHOAL_CONFIG or ./shoal.toml, read as the Python
 * worker reads it: src/config.ts), the default. Bad values are errors that say where they came from.
 */
import { hostname } from "node:os";
import { findConfig, readConfig, type FileSettings } from "./config.js";
import { parseDuration } from "./durations.js";
import { isEndpoint } from "./endpoints.js";
import { keyPaths, type KeyPaths } from "./keys.js";

export interface CliOptions {
  group: string;
  app: string;
  connect: string;
  concurrency: number;
  graceS: number;
  heartbeatS: number;
  /** Seconds a run may take unless its workflow says otherwise (the group's `timeout`; 0 = no limit). */
  timeoutS: number;
  /** Drain and exit 0 after this many jobs, for a supervisor to start a fresh process (0 = never). */
  maxJobs: number;
  /** Drain and exit 0 when resident memory passes this many MiB (0 = never). */
  maxMemoryMb: number;
  /** The group's niceness: the worker lowers its priority to it at start (never raises it). */
  nice: number;
  maxStepBytes: number;
  server: string;
  /** The config file read, if any, and the keys in it this worker does not know. */
  config: string | null;
  warnings: string[];
  /** CURVE: this worker's `.key_secret` file and the broker's public `.key` file, each with its origin (both or neither). */
  keys: KeyPaths;
  help: boolean;
}

export const DEFAULTS = { connect: "tcp://127.0.0.1:5555", concurrency: 10, graceS: 30, heartbeatS: 1, maxStepBytes: 1024 * 1024 };

export const USAGE = `usage: shoal-worker --group GROUP --app FILE [--config FILE] [--connect ENDPOINT]
                    [--concurrency N] [--grace SECONDS] [--heartbeat-interval SECONDS]
                    [--server NAME] [--key FILE --broker-key FILE]

Run a Shoal worker for one group. --app is an ES module or a CommonJS file; every workflow
that defineWorkflow() creates while it loads is served (those of --group). Settings not given
by a flag or the environment come from shoal.toml, as the Python worker reads them.

  --group               worker group (default: SHOAL_GROUP, else "default")
  --app                 the file that defines the workflows (required)
  --config              shoal.toml to read (default: SHOAL_CONFIG, else ./shoal.toml if present)
  --connect             broker endpoint (default: SHOAL_BROKER, else [broker] bind, else ${DEFAULTS.connect})
  --concurrency         parallel runs (default: the group's concurrency, else ${DEFAULTS.concurrency})
  --grace               drain time on SIGTERM, like "30s" (default: SHOAL_GRACE, else the group's grace, else 30s)
  --heartbeat-interval  like "200ms" or seconds (default: SHOAL_HEARTBEAT_INTERVAL, else [broker] heartbeat_interval, else 1s)
  --server              server name: picks [servers.NAME] blocks, shown by the broker (default: SHOAL_SERVER, else the host name)
  --key                 CURVE: this worker's NAME.key_secret from \`shoal keygen\` (default: SHOAL_KEY, else [security] key)
  --broker-key          CURVE: the broker's public NAME.key (default: SHOAL_BROKER_KEY, else [security] broker_public_key)

From shoal.toml only: the group's timeout, max_jobs, max_memory and nice, [broker] max_step_bytes.`;

/** A bad command line or environment value: the message says which flag or variable and why. */
export class UsageError extends Error {
  override name = "UsageError";
}

const FLAGS = new Set(["group", "app", "config", "connect", "concurrency", "grace", "heartbeat-interval", "server", "key", "broker-key"]);

type Env = Record<string, string | undefined>;

function readFlags(argv: string[]): { given: Map<string, string>; help: boolean } {
  const given = new Map<string, string>();
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "-h" || arg === "--help") {
      help = true;
      continue;
    }
    if (!arg.startsWith("--")) throw new UsageError(`unexpected argument ${JSON.stringify(arg)}`);
    const eq = arg.indexOf("=");
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    if (!FLAGS.has(name)) throw new UsageError(`unknown flag --${name}`);
    const value: string | undefined = eq < 0 ? argv[++i] : arg.slice(eq + 1);
    if (value === undefined || (eq < 0 && value.startsWith("--"))) throw new UsageError(`--${name} needs a value`);
    given.set(name, value);
  }
  return { given, help };
}

/** A flag's or variable's text, checked; undefined when neither is set. */
function fromText<T>(given: Map<string, string>, env: Env, flag: string, envName: string | null,
                     read: (text: string) => T | undefined, expected: string): T | undefined {
  const [text, where] = given.has(flag) ? [given.get(flag), `--${flag}`] : envName && env[envName] ? [env[envName], envName] : [undefined, ""];
  if (text === undefined) return undefined;
  const value = read(text);
  if (value === undefined) throw new UsageError(`${where} must be ${expected}, got ${JSON.stringify(text)}`);
  return value;
}

const positiveSeconds = (zeroOk: boolean) => (text: string): number | undefined => {
  try {
    const s = parseDuration(text);
    return s > 0 || (zeroOk && s === 0) ? s : undefined;
  } catch {
    return undefined;
  }
};
const wholeNumber = (text: string): number | undefined => (/^\s*\d+\s*$/.test(text) && Number(text) >= 1 ? Number(text) : undefined);

/** Parse `argv` (without node and the script); `env` and the config file in `cwd` give the defaults. */
export function parseArgs(argv: string[], env: Env = {}, cwd = process.cwd(), host = hostname()): CliOptions {
  const { given, help } = readFlags(argv);
  const group = given.get("group") ?? (env.SHOAL_GROUP || "default");
  const server = given.get("server") ?? (env.SHOAL_SERVER || host);
  const options: CliOptions = {
    group, server, app: given.get("app") ?? "", help, config: null, warnings: [],
    connect: DEFAULTS.connect, concurrency: DEFAULTS.concurrency, graceS: DEFAULTS.graceS, heartbeatS: DEFAULTS.heartbeatS,
    timeoutS: 0, maxJobs: 0, maxMemoryMb: 0, nice: 0, maxStepBytes: DEFAULTS.maxStepBytes,
    keys: {},
  };
  if (help) return options;
  if (!options.app) throw new UsageError("--app FILE is required (the file that defines the workflows)");
  if (!group) throw new UsageError("--group must not be empty");
  const connect = fromText(given, env, "connect", "SHOAL_BROKER", (t) => (isEndpoint(t) ? t : undefined),
    "an endpoint like tcp://HOST:PORT or ipc:///path");
  const concurrency = fromText(given, env, "concurrency", null, wholeNumber, "an integer of at least 1");
  const graceS = fromText(given, env, "grace", "SHOAL_GRACE", positiveSeconds(true), 'a duration like "30s" or seconds >= 0');
  const heartbeatS = fromText(given, env, "heartbeat-interval", "SHOAL_HEARTBEAT_INTERVAL", positiveSeconds(false),
    'a duration like "200ms" or seconds above 0');
  const path = findConfig(given.get("config"), env, cwd);
  const file: Partial<FileSettings> = path === null ? {} : readConfig(path, group, server, cwd);
  options.config = path;
  options.warnings = file.warnings ?? [];
  options.keys = keyPaths({ key: given.get("key"), brokerKey: given.get("broker-key") }, env, file.security);
  options.connect = connect ?? file.bind ?? DEFAULTS.connect;
  options.concurrency = concurrency ?? file.concurrency ?? DEFAULTS.concurrency;
  options.graceS = graceS ?? file.graceS ?? DEFAULTS.graceS;
  options.heartbeatS = heartbeatS ?? file.heartbeatS ?? DEFAULTS.heartbeatS;
  options.timeoutS = file.timeoutS ?? 0;
  options.maxJobs = file.maxJobs ?? 0;
  options.maxMemoryMb = file.maxMemoryMb ?? 0;
  options.nice = file.nice ?? 0;
  options.maxStepBytes = file.maxStepBytes ?? DEFAULTS.maxStepBytes;
  if (!isEndpoint(options.connect)) {
    throw new UsageError(`[broker] bind ${JSON.stringify(options.connect)} in ${path} is not an endpoint a worker can connect to; pass --connect`);
  }
  return options;
}
