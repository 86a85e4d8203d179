/**
 * Collects one output stream with a byte cap, keeping the head and the tail
 * (where errors usually are) and dropping the middle, so a command that
 * prints gigabytes costs at most `cap` bytes of memory.
 */
export class CappedOutput {
  private readonly headCap: number;
  private readonly tailCap: number;
  private head: Buffer[] = [];
  private headBytes = 0;
  private tail: Buffer[] = [];
  private tailBytes = 0;
  total = 0;

  constructor(readonly cap: number) {
    this.headCap = Math.floor(cap / 2);
    this.tailCap = cap - this.headCap;
  }

  push(chunk: Buffer): void {
    this.total += chunk.length;
    if (this.headBytes < this.headCap) {
      const take = Math.min(chunk.length, this.headCap - this.headBytes);
      this.head.push(chunk.subarray(0, take));
      this.headBytes += take;
      chunk = chunk.subarray(take);
      if (!chunk.length) return;
    }
    // Copy: the tail outlives the caller's buffer, which may be a slice of a larger one.
    this.tail.push(Buffer.from(chunk));
    this.tailBytes += chunk.length;
    while (this.tailBytes - this.tail[0]!.length >= this.tailCap) {
      this.tailBytes -= this.tail.shift()!.length;
    }
  }

  get truncated(): boolean {
    return this.total > this.cap;
  }

  /** The kept bytes as text (invalid UTF-8 becomes U+FFFD), with a marker where bytes were dropped. */
  text(): string {
    const head = Buffer.concat(this.head);
    let tail = Buffer.concat(this.tail);
    if (!this.truncated) return Buffer.concat([head, tail]).toString("utf8");
    tail = tail.subarray(tail.length - this.tailCap);
    const omitted = this.total - head.length - tail.length;
    return `${head.toString("utf8")}\n[... pyro: ${omitted} bytes omitted ...]\n${tail.toString("utf8")}`;
  }
}
