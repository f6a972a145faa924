/** The `shoal-worker` command line: flags, with environment defaults, checked with clear errors. */

export interface CliOptions {
  group: string;
  app: string;
  connect: string;
  concurrency: number;
  graceS: number;
  heartbeatS: number;
  server: string;
  /** CURVE: this worker's `.key_secret` file and the broker's public `.key` file (both or neither). */
  key: string;
  brokerKey: string;
  help: boolean;
}

export const USAGE = `usage: shoal-worker --group GROUP --app FILE [--connect ENDPOINT] [--concurrency N]
                    [--grace SECONDS] [--heartbeat-interval SECONDS] [--server NAME]
                    [--key FILE --broker-key FILE]

Run a Shoal worker for one group. --app is an ES module or a CommonJS file; every workflow
that defineWorkflow() creates while it loads is served (those of --group).

  --group               worker group (default: SHOAL_GROUP, else "default")
  --app                 the file that defines the workflows (required)
  --connect             broker endpoint (default: SHOAL_BROKER, else tcp://127.0.0.1:5555)
  --concurrency         parallel runs (default 4)
  --grace               seconds a SIGTERM drain waits before handing jobs back (default: SHOAL_GRACE, else 30)
  --heartbeat-interval  seconds; match the broker's heartbeat_interval (default: SHOAL_HEARTBEAT_INTERVAL, else 1)
  --server              server name shown by the broker (default: SHOAL_SERVER)
  --key                 CURVE: this worker's NAME.key_secret from \`shoal keygen\` (default: SHOAL_KEY)
  --broker-key          CURVE: the broker's public NAME.key (default: SHOAL_BROKER_KEY)`;

/** A bad command line: the message says which flag and why. */
export class UsageError extends Error {}

const FLAGS = new Set(["group", "app", "connect", "concurrency", "grace", "heartbeat-interval", "server", "key", "broker-key"]);
const ENDPOINT = /^(tcp:\/\/[^\s:]+:\d+|ipc:\/\/\S+|inproc:\/\/\S+)$/;

function positive(flag: string, text: string, integer: boolean): number {
  const value = Number(text);
  if (!Number.isFinite(value) || value <= 0 || (integer && !Number.isInteger(value))) {
    throw new UsageError(`--${flag} must be ${integer ? "an integer of at least 1" : "a number of seconds above 0"}, got ${JSON.stringify(text)}`);
  }
  return value;
}

/** Parse `argv` (without node and the script); `env` gives the defaults. */
export function parseArgs(argv: string[], env: Record<string, string | undefined> = {}): CliOptions {
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
    let value: string | undefined = eq < 0 ? argv[++i] : arg.slice(eq + 1);
    if (value === undefined || (eq < 0 && value.startsWith("--"))) throw new UsageError(`--${name} needs a value`);
    given.set(name, value);
  }
  const pick = (flag: string, envName: string, fallback: string) => given.get(flag) ?? env[envName] ?? fallback;
  const options: CliOptions = {
    group: pick("group", "SHOAL_GROUP", "default"),
    app: given.get("app") ?? "",
    connect: pick("connect", "SHOAL_BROKER", "tcp://127.0.0.1:5555"),
    concurrency: positive("concurrency", given.get("concurrency") ?? "4", true),
    graceS: positive("grace", pick("grace", "SHOAL_GRACE", "30"), false),
    heartbeatS: positive("heartbeat-interval", pick("heartbeat-interval", "SHOAL_HEARTBEAT_INTERVAL", "1"), false),
    server: pick("server", "SHOAL_SERVER", ""),
    key: pick("key", "SHOAL_KEY", ""),
    brokerKey: pick("broker-key", "SHOAL_BROKER_KEY", ""),
    help,
  };
  if (help) return options;
  if (!options.app) throw new UsageError("--app FILE is required (the file that defines the workflows)");
  if (!options.group) throw new UsageError("--group must not be empty");
  if (Boolean(options.key) !== Boolean(options.brokerKey)) {
    throw new UsageError("CURVE needs both --key (this worker's .key_secret) and --broker-key (the broker's .key)");
  }
  if (!ENDPOINT.test(options.connect)) {
    throw new UsageError(`--connect ${JSON.stringify(options.connect)} is not an endpoint like tcp://HOST:PORT or ipc:///path`);
  }
  return options;
}
