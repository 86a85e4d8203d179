import { spawn } from "node:child_process";
import { closeSync, openSync, readSync, fstatSync, createWriteStream, statSync, writeFileSync } from "node:fs";
import { gunzipSync } from "node:zlib";

/**
 * Turns Debian's /boot/vmlinuz (an x86 bzImage) into the ELF vmlinux that
 * QEMU's microvm and Firecracker boot through the PVH entry. The bzImage
 * says where its compressed kernel is (Documentation/arch/x86/boot.rst):
 *
 *   0x1f1  setup_sects (u8)    real-mode setup size in 512-byte sectors (0 means 4)
 *   0x202  header (u32)        "HdrS"
 *   0x206  version (u16)       boot protocol; payload fields exist from 2.08
 *   0x248  payload_offset (u32) from the start of the protected-mode code,
 *                               which follows the (setup_sects + 1) sectors
 *   0x24c  payload_length (u32)
 *
 * Every compressor but gzip gets the uncompressed size appended as 4 bytes
 * little-endian (the kernel's `size_append`): those are cut off before the
 * tool sees them and then checked against what came out, which catches a
 * payload that lies about itself.
 */
export class BzImageError extends Error {
  override readonly name = "BzImageError";
}

export type Compression = "gzip" | "xz" | "lz4" | "zstd" | "bzip2" | "lzma" | "lzo";

export interface BzImageHeader {
  setupSects: number;
  version: number;
  /** Absolute file offset of the compressed payload. */
  payloadStart: number;
  payloadLength: number;
  compression: Compression;
}

const MAGIC: [Compression, number[]][] = [
  ["gzip", [0x1f, 0x8b]],
  ["xz", [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]],
  ["lz4", [0x02, 0x21, 0x4c, 0x18]], // the legacy frame the kernel's lz4 uses
  ["zstd", [0x28, 0xb5, 0x2f, 0xfd]],
  ["bzip2", [0x42, 0x5a, 0x68]],
  ["lzo", [0x89, 0x4c, 0x5a, 0x4f]],
  ["lzma", [0x5d, 0x00, 0x00]],
];

export function detectCompression(head: Buffer): Compression | null {
  for (const [name, magic] of MAGIC) if (head.length >= magic.length && magic.every((b, i) => head[i] === b)) return name;
  return null;
}

/** Parses the header of a bzImage given its first bytes (at least 0x250) and its total size. */
export function parseBzImageHeader(head: Buffer, fileSize: number, payloadHead?: Buffer): Omit<BzImageHeader, "compression"> & { compression: Compression | null } {
  if (head.length < 0x250 || fileSize < 0x250) throw new BzImageError(`too short for a bzImage (${fileSize} bytes)`);
  if (head.readUInt32LE(0x202) !== 0x53726448) throw new BzImageError('no "HdrS" boot header at 0x202: not an x86 bzImage');
  const version = head.readUInt16LE(0x206);
  if (version < 0x208) throw new BzImageError(`boot protocol ${(version >> 8).toString()}.${(version & 0xff).toString().padStart(2, "0")} has no payload fields (2.08 or later needed)`);
  const setupSects = head[0x1f1] || 4;
  const pmStart = (setupSects + 1) * 512;
  const payloadOffset = head.readUInt32LE(0x248);
  const payloadLength = head.readUInt32LE(0x24c);
  const payloadStart = pmStart + payloadOffset;
  if (payloadLength === 0) throw new BzImageError("payload_length is 0");
  if (payloadStart + payloadLength > fileSize) {
    throw new BzImageError(`the payload (${payloadLength} bytes at ${payloadStart}) runs past the end of the file (${fileSize} bytes)`);
  }
  return { setupSects, version, payloadStart, payloadLength, compression: payloadHead ? detectCompression(payloadHead) : null };
}

/** Reads and parses a bzImage file's header, including the payload's compression. */
export function readBzImageHeader(path: string): BzImageHeader {
  const fd = openSync(path, "r");
  try {
    const size = fstatSync(fd).size;
    const head = Buffer.alloc(Math.min(0x400, size));
    readSync(fd, head, 0, head.length, 0);
    const h = parseBzImageHeader(head, size);
    const ph = Buffer.alloc(Math.min(8, h.payloadLength));
    readSync(fd, ph, 0, ph.length, h.payloadStart);
    const compression = detectCompression(ph);
    if (!compression) throw new BzImageError(`the payload starts with ${ph.toString("hex")}, which is no compression format known here`);
    return { ...h, compression };
  } finally {
    closeSync(fd);
  }
}

/** The command that decompresses each format from stdin to stdout (Debian's lz4, zstd, xz-utils). */
const TOOLS: Partial<Record<Compression, { cmd: string; args: string[]; pkg: string }>> = {
  lz4: { cmd: "lz4", args: ["-d", "-c"], pkg: "lz4" },
  zstd: { cmd: "zstd", args: ["-d", "-c", "-q"], pkg: "zstd" },
  // --single-stream: stop at the end of the xz stream, whatever follows it.
  xz: { cmd: "xz", args: ["-d", "-c", "--single-stream"], pkg: "xz-utils" },
};

export interface DecompressResult {
  compression: Compression;
  bytes: number;
}

/**
 * Decompresses the payload of `bzImage` into `out` (created or truncated).
 * Throws BzImageError when the format is unsupported, the tool is missing
 * (`missingTool` is set then, for the caller's hint) or fails, or the output
 * size disagrees with the size the payload records.
 */
export async function extractVmlinux(bzImage: string, out: string): Promise<DecompressResult> {
  const h = readBzImageHeader(bzImage);
  const fd = openSync(bzImage, "r");
  let payload: Buffer;
  try {
    payload = Buffer.alloc(h.payloadLength);
    readSync(fd, payload, 0, payload.length, h.payloadStart);
  } finally {
    closeSync(fd);
  }
  if (h.compression === "gzip") {
    let data: Buffer;
    try {
      data = gunzipSync(payload);
    } catch (error) {
      throw new BzImageError(`the gzip payload does not decompress: ${(error as Error).message}`);
    }
    writeFileSync(out, data);
    return { compression: "gzip", bytes: data.length };
  }
  const tool = TOOLS[h.compression];
  if (!tool) throw new BzImageError(`the kernel payload is ${h.compression}-compressed, which pyro does not decompress (gzip, xz, lz4 and zstd are supported)`);
  if (payload.length < 5) throw new BzImageError("the payload is too short to hold data and its size");
  const expected = payload.readUInt32LE(payload.length - 4);
  await runDecompressor(tool, payload.subarray(0, payload.length - 4), out);
  const bytes = statSync(out).size;
  if (bytes !== expected) throw new BzImageError(`the ${h.compression} payload decompressed to ${bytes} bytes, but records ${expected}`);
  return { compression: h.compression, bytes };
}

export class MissingToolError extends BzImageError {
  constructor(
    readonly tool: string,
    readonly pkg: string,
  ) {
    super(`${tool} is not installed`);
  }
}

function runDecompressor(tool: { cmd: string; args: string[]; pkg: string }, input: Buffer, out: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const sink = createWriteStream(out);
    const child = spawn(tool.cmd, tool.args, { stdio: ["pipe", "pipe", "pipe"] });
    let stderr = "";
    let failed: Error | null = null;
    child.on("error", (error: NodeJS.ErrnoException) => {
      failed = error.code === "ENOENT" ? new MissingToolError(tool.cmd, tool.pkg) : new BzImageError(`could not run ${tool.cmd}: ${error.message}`);
      sink.destroy();
      reject(failed); // a child that never started may emit no close
    });
    child.stderr.on("data", (d: Buffer) => (stderr = (stderr + d.toString("utf8")).slice(-2000)));
    child.stdin.on("error", () => {}); // EPIPE when the tool gives up early: its exit status says why
    child.stdout.pipe(sink);
    child.stdin.end(input);
    let code: number | null = null;
    let closed = 0;
    const finish = () => {
      if (++closed < 2) return;
      if (failed) return reject(failed);
      if (code !== 0) return reject(new BzImageError(`${tool.cmd} could not decompress the payload (exit ${code}): ${stderr.trim().split("\n").slice(-2).join(" | ")}`));
      resolve();
    };
    child.on("close", (c) => {
      code = c;
      finish();
    });
    sink.on("close", finish);
    sink.on("error", (error) => {
      failed = error;
    });
  });
}
