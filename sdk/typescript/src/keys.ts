/**
 * CURVE keys from the files `shoal keygen` writes (zmq.auth certificates): `NAME.key` holds
 * `public-key = "..."`, `NAME.key_secret` holds both keys, each 40 characters of Z85.
 */
import { readFileSync } from "node:fs";
import type { CurveKeys } from "./link.js";

/** A key file that cannot be used: the message names the file and what is wrong. */
export class KeyError extends Error {}

function field(text: string, name: string, file: string): string {
  const found = new RegExp(`^\\s*${name}\\s*=\\s*"([^"]{40})"\\s*$`, "m").exec(text);
  if (!found) throw new KeyError(`${file}: no ${name} of 40 Z85 characters (a zmq.auth certificate, as \`shoal keygen\` writes)`);
  return found[1];
}

function read(file: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (err) {
    throw new KeyError(`${file}: cannot read the key file (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
}

/** This peer's key pair (`--key`, a `.key_secret` file) and the broker's public key (`--broker-key`). */
export function loadCurveKeys(secretFile: string, brokerPublicFile: string): CurveKeys {
  const own = read(secretFile);
  return {
    publicKey: field(own, "public-key", secretFile),
    secretKey: field(own, "secret-key", secretFile),
    serverKey: field(read(brokerPublicFile), "public-key", brokerPublicFile),
  };
}
