/** Doubling reconnect delays: `first`, twice that, ... at most `max`; `reset` after the broker is heard. */
export class Backoff {
  private current: number;

  constructor(private readonly firstMs: number, private readonly maxMs: number) {
    if (!(firstMs > 0) || !(maxMs >= firstMs)) throw new RangeError("backoff needs 0 < first <= max");
    this.current = firstMs;
  }

  /** The delay to wait now; the next one is doubled (up to the maximum). */
  next(): number {
    const d = this.current;
    this.current = Math.min(this.current * 2, this.maxMs);
    return d;
  }

  reset(): void {
    this.current = this.firstMs;
  }
}
