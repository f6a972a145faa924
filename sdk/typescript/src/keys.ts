/**
 * CURVE keys from the files `shoal keygen` writes (zmq.auth certificates): `NAME.key` holds
 * `public-key = "..."`, `NAME.key_secret` holds both keys, each 40 characters of Z85.
 *
 * Which files, by the Python side's rules (shoal.security.key_paths): each of the two is taken
 * from its flag or option (`--key`, `--broker-key`), else its variable (SHOAL_KEY,
 * SHOAL_BROKER_KEY), else shoal.toml's `[security] key` / `broker_public_key`; a relative path is
 * relative to the working directory, as in Python. Neither set: a plain connection (a broker with
 * CURVE on never answers it). One set without the other is an error.
 */
import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { resolve } from "node:path";
import { findConfig, readConfig } from "./config.js";
import type { CurveKeys } from "./link.js";

/** A key file that cannot be used, or half a pair: the message names the file or setting and what is wrong. */
export class KeyError extends Error {
  override name = "KeyError";
}

/** One key file and where its path came from ("--key", "SHOAL_KEY", "[security] key in shoal.toml:3"). */
export interface KeySource {
  path: string;
  origin: string;
}

/** The two files to connect with, each undefined when set nowhere. */
export interface KeyPaths {
  key?: KeySource;
  brokerKey?: KeySource;
}

type Env = Record<string, string | undefined>;

/** Each file from the first of: `given` (flag or option), the environment, the config. */
export function keyPaths(given: { key?: string; brokerKey?: string }, env: Env, config: KeyPaths = {}): KeyPaths {
  const pick = (value: string | undefined, flag: string, variable: string, fromConfig?: KeySource): KeySource | undefined =>
    value ? { path: value, origin: flag } : env[variable] ? { path: env[variable]!, origin: variable } : fromConfig;
  return {
    key: pick(given.key, "--key", "SHOAL_KEY", config.key),
    brokerKey: pick(given.brokerKey, "--broker-key", "SHOAL_BROKER_KEY", config.brokerKey),
  };
}

/** Whether `paths` is settled without the config file (both set, as Python skips reading it then). */
export const settled = (paths: KeyPaths): boolean => paths.key !== undefined && paths.brokerKey !== undefined;

/** Load the keys `paths` names; undefined when neither is set. Half a pair or a bad file is a KeyError. */
export function curveKeys(paths: KeyPaths, cwd = process.cwd()): CurveKeys | undefined {
  const { key, brokerKey } = paths;
  if (!key && !brokerKey) return undefined;
  if (!brokerKey) {
    throw new KeyError(`key is set (${key!.origin}) but broker_public_key is not: give the broker's public key too ` +
      "(--broker-key, SHOAL_BROKER_KEY or [security] broker_public_key)");
  }
  if (!key) {
    throw new KeyError(`broker_public_key is set (${brokerKey.origin}) but key is not: give this program's secret key too ` +
      "(--key, SHOAL_KEY or [security] key)");
  }
  const own = read(key, cwd);
  if (!/^\s*secret-key\s*=/m.test(own)) {
    throw new KeyError(`${key.origin} ${key.path}: holds only a public key; give the NAME.key_secret file`);
  }
  return {
    publicKey: field(own, "public-key", key),
    secretKey: field(own, "secret-key", key),
    serverKey: field(read(brokerKey, cwd), "public-key", brokerKey),
  };
}

/**
 * Where a client's or an embedded worker's CURVE keys come from: `key` (this program's NAME.key_secret) and `brokerKey`
 * (the broker's public NAME.key), each else SHOAL_KEY / SHOAL_BROKER_KEY, else `[security] key` /
 * `broker_public_key` of `config` (else SHOAL_CONFIG, else ./shoal.toml), as the Python Client and worker.
 */
export interface KeyOptions {
  key?: string;
  brokerKey?: string;
  config?: string;
  /** The environment to read (default process.env) and the directory relative paths start from. */
  env?: Record<string, string | undefined>;
  cwd?: string;
}

/** The keys `options` name, loaded; undefined for a plain connection. Throws KeyError or ConfigError. */
export function resolveCurve(options: KeyOptions = {}): CurveKeys | undefined {
  const env = options.env ?? process.env;
  const cwd = options.cwd ?? process.cwd();
  let paths = keyPaths(options, env);
  if (!settled(paths)) { // as Python: the config file is read only when the flags and environment leave a key open
    const file = findConfig(options.config, env, cwd);
    if (file !== null) paths = keyPaths(options, env, readConfig(file, "default", env.SHOAL_SERVER || hostname(), cwd).security);
  }
  return curveKeys(paths, cwd);
}

/** This peer's key pair (a `.key_secret` file) and the broker's public key (a `.key` file). */
export function loadCurveKeys(secretFile: string, brokerPublicFile: string): CurveKeys {
  return curveKeys({ key: { path: secretFile, origin: "key" }, brokerKey: { path: brokerPublicFile, origin: "broker key" } })!;
}

const Z85 = "[0-9a-zA-Z.\\-:+=^!/*?&<>()\\[\\]{}@%$#]{40}";

function field(text: string, name: string, file: KeySource): string {
  const found = new RegExp(`^\\s*${name}\\s*=\\s*"(${Z85})"\\s*$`, "m").exec(text);
  if (!found) {
    throw new KeyError(`${file.origin} ${file.path}: not a CURVE certificate: no ${name} of 40 Z85 characters ` +
      "(a zmq.auth certificate, as `shoal keygen` writes)");
  }
  return found[1];
}

function read(file: KeySource, cwd: string): string {
  try {
    return readFileSync(resolve(cwd, file.path), "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new KeyError(`${file.origin} ${file.path}: cannot read the key file (${code ?? (err as Error).message})`);
  }
}
