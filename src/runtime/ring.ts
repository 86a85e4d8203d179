/**
 * A byte ring for output nobody has read yet: appends never block and never
 * grow past `cap`; when the reader falls behind, the oldest unread bytes are
 * dropped and counted, so a shell left unread for hours costs `cap` bytes.
 */
export class ByteRing {
  private readonly buf: Buffer;
  /** Where the oldest unread byte is. */
  private start = 0;
  private size = 0;
  /** Unread bytes dropped since the last take(). */
  private droppedSinceTake = 0;
  /** Every byte ever appended, and every byte ever dropped unread. */
  total = 0;
  dropped = 0;

  constructor(readonly cap: number) {
    this.buf = Buffer.alloc(cap);
  }

  get length(): number {
    return this.size;
  }

  push(chunk: Buffer): void {
    this.total += chunk.length;
    if (chunk.length >= this.cap) {
      // Only the newest cap bytes can stay.
      const lost = this.size + chunk.length - this.cap;
      this.drop(lost);
      chunk.copy(this.buf, 0, chunk.length - this.cap);
      this.start = 0;
      this.size = this.cap;
      return;
    }
    const over = this.size + chunk.length - this.cap;
    if (over > 0) {
      this.start = (this.start + over) % this.cap;
      this.size -= over;
      this.drop(over);
    }
    let at = (this.start + this.size) % this.cap;
    let off = 0;
    while (off < chunk.length) {
      const n = Math.min(chunk.length - off, this.cap - at);
      chunk.copy(this.buf, at, off, off + n);
      off += n;
      at = (at + n) % this.cap;
    }
    this.size += chunk.length;
  }

  /** The unread bytes, without consuming them. */
  peek(max = this.size): Buffer {
    const n = Math.min(max, this.size);
    const out = Buffer.alloc(n);
    const first = Math.min(n, this.cap - this.start);
    this.buf.copy(out, 0, this.start, this.start + first);
    if (n > first) this.buf.copy(out, first, 0, n - first);
    return out;
  }

  /** The newest n unread bytes, without consuming them. */
  peekTail(n: number): Buffer {
    const take = Math.min(n, this.size);
    const from = (this.start + this.size - take) % this.cap;
    const out = Buffer.alloc(take);
    const first = Math.min(take, this.cap - from);
    this.buf.copy(out, 0, from, from + first);
    if (take > first) this.buf.copy(out, first, 0, take - first);
    return out;
  }

  /** Consumes up to max unread bytes; says how many were dropped unread before them. */
  take(max: number): { data: Buffer; dropped: number } {
    const data = this.peek(max);
    this.start = (this.start + data.length) % this.cap;
    this.size -= data.length;
    const dropped = this.droppedSinceTake;
    this.droppedSinceTake = 0;
    return { data, dropped };
  }

  private drop(n: number): void {
    this.dropped += n;
    this.droppedSinceTake += n;
  }
}
