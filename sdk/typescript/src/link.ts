/**
 * One DEALER connection to the broker. zeromq.js allows one send in progress per socket, so
 * sends are queued and written one after another; received messages go to a callback.
 */
import * as zmq from "zeromq";

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

  constructor(readonly endpoint: string, onMessage: (frames: Buffer[]) => void, curve?: CurveKeys) {
    // Security goes here, before connect: with CURVE keys the broker authenticates this peer
    // (the broker's side of it is the security issue's work).
    const options: Record<string, unknown> = { linger: 0 };
    if (curve !== undefined) {
      options.curveServerKey = curve.serverKey;
      options.curvePublicKey = curve.publicKey;
      options.curveSecretKey = curve.secretKey;
    }
    this.sock = new zmq.Dealer(options);
    this.sock.connect(endpoint);
    void this.receive(onMessage);
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
