/**
 * One DEALER connection to the broker. zeromq.js allows one send in progress per socket, so
 * sends are queued and written one after another; received messages go to a callback.
 */
import * as zmq from "zeromq";

import { isIpv6 } from "./endpoints.js";

/** CURVE keys (Z85 text, 40 characters each): the broker's public key, and this peer's pair. */
export interface CurveKeys {
  serverKey: string;
  publicKey: string;
  secretKey: string;
}

export class Link {
  private readonly sock: zmq.Dealer;
  private readonly queue: Buffer[][] = [];
  private sending = false;
  private closed = false;
  private idleWaiters: (() => void)[] = [];
  /** Why the last handshake with the broker failed (a CURVE broker refusing our key, say); null once one succeeds. */
  handshakeError: string | null = null;

  /** `onHandshakeError` hears each failed handshake, explained (the broker's refusals are silent otherwise). */
  constructor(readonly endpoint: string, onMessage: (frames: Buffer[]) => void, readonly curve?: CurveKeys,
              private readonly onHandshakeError?: (why: string) => void) {
    // CURVE keys go on before connect: the broker's authenticator admits only keys in its allow-lists.
    const options: Record<string, unknown> = { linger: 0, ipv6: isIpv6(endpoint) };
    if (curve !== undefined) {
      options.curveServerKey = curve.serverKey;
      options.curvePublicKey = curve.publicKey;
      options.curveSecretKey = curve.secretKey;
    }
    this.sock = new zmq.Dealer(options);
    void this.watch();
    this.sock.connect(endpoint);
    void this.receive(onMessage);
  }

  /** libzmq's socket events: the one place a refused CURVE handshake shows on this side. */
  private async watch(): Promise<void> {
    try {
      for await (const event of this.sock.events) {
        if (this.closed) return;
        if (event.type === "handshake") this.handshakeError = null;
        if (!event.type.startsWith("handshake:error")) continue;
        const why = this.explain(event.type, (event as { error?: NodeJS.ErrnoException }).error);
        if (why === null) continue;
        this.handshakeError = why;
        this.onHandshakeError?.(why);
      }
    } catch {
      // the observer ends with the socket; nothing to report
    }
  }

  private explain(type: string, error?: NodeJS.ErrnoException): string | null {
    const at = `the broker at ${this.endpoint}`;
    if (type === "handshake:error:auth") {
      return `${at} refused this key (${this.curve?.publicKey}): it is in none of its allow-lists (unknown or revoked)`;
    }
    if (type === "handshake:error:protocol" && error?.code === "ERR_ZMTP_MECHANISM_MISMATCH") {
      return this.curve ? `${at} does not use CURVE, but this program has a key: drop --key / SHOAL_KEY / [security] key`
        : `${at} requires CURVE and this program has no key: give one (--key and --broker-key, SHOAL_KEY and SHOAL_BROKER_KEY, or [security] key and broker_public_key)`;
    }
    // a CURVE handshake the broker breaks off: most often our broker key is not its key
    if (this.curve) return `the CURVE handshake with ${at} failed (${error?.code ?? error?.message ?? type}): is the broker key its public key?`;
    return null;
  }

  private async receive(onMessage: (frames: Buffer[]) => void): Promise<void> {
    try {
      for await (const frames of this.sock) {
        if (this.closed) return;
        onMessage(frames);
      }
    } catch (err) {
      if (!this.closed) process.stderr.write(`shoal: receive failed on ${this.endpoint}: ${(err as Error).message}\n`);
    }
  }

  /** Queue one message (never blocks; a message to a broker that is gone is lost with the socket). */
  send(frames: Buffer[]): void {
    if (this.closed) return;
    this.queue.push(frames);
    if (!this.sending) void this.pump();
  }

  private async pump(): Promise<void> {
    this.sending = true;
    while (this.queue.length && !this.closed) {
      const frames = this.queue.shift()!;
      try {
        await this.sock.send(frames);
      } catch (err) {
        if (!this.closed) process.stderr.write(`shoal: send failed on ${this.endpoint}: ${(err as Error).message}\n`);
      }
    }
    this.sending = false;
    for (const w of this.idleWaiters.splice(0)) w();
  }

  /** Resolves once every queued message was handed to ZeroMQ. */
  idle(): Promise<void> {
    if (!this.sending && !this.queue.length) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Close; `lingerMs` lets the last messages (DONE, RETURN, BYE) leave. */
  close(lingerMs = 0): void {
    if (this.closed) return;
    this.closed = true;
    this.sock.linger = lingerMs;
    this.sock.close();
    for (const w of this.idleWaiters.splice(0)) w();
  }
}
