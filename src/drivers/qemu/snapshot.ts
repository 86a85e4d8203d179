import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { closeSync, createWriteStream, fstatSync, openSync, read, readdirSync, renameSync, rmSync, statSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { dirname, join } from "node:path";
import { ensureDir, readJsonOrNull, writeJsonAtomic } from "../../util/fsutil.js";
import { sha256FileCached } from "../../environments/vm/store.js";
import { contentStamp, rememberedFileSha256 } from "../../util/file-sha256.js";
import type { SandboxSpec, VmBootFiles } from "../types.js";
import { qemuArgs, type DataLayer } from "./args.js";

/**
 * Snapshots of one-shot VMs (docs/drivers.md, "Snapshots"): a VM booted
 * once to its agent, paused and migrated to a file, which later one-shot
 * runs of the same shape restore instead of booting (TCG: ~0.2 s, not ~2 s).
 *
 * A snapshot is `<key>.bin` (qemu's migration stream) and `<key>.json`
 * (its key, size and sha256) in the environment's `snapshots/` directory.
 * The key is a digest of everything the saved state depends on: qemu's
 * argv with the per-VM paths taken out (so mem_mib, vcpu_count, the RAM
 * layer's size, accel, the kernel command line), the sha256 of the kernel,
 * initramfs and root image, qemu's version and the agent's sha256. A
 * restored VM runs the same argv (microvm has no hotplug: the devices must
 * be the snapshot's), with only its own sockets at other paths.
 */

/** Every VM restored from a snapshot has the template's hostname: the kernel command line is part of the saved state. */
export const SNAPSHOT_HOSTNAME = "pyro";
const FORMAT = 1;

export interface SnapshotPlan {
  key: string;
  dir: string;
  bin: string;
  meta: string;
  lock: string;
}

export interface SnapshotMeta {
  format: number;
  key: string;
  bytes: number;
  sha256: string;
  made_at: string;
  qemu_version: string;
  /** The file's identity when its content was last checked against sha256 (openSnapshot); absent until then. */
  stamp?: string;
}

const versions = new Map<string, string>();

/** qemu's version line (cached per binary and mtime: a qemu upgraded under a running server changes it). */
export function qemuVersion(qemu: string): string {
  let stamp = "";
  try {
    const st = statSync(qemu);
    stamp = `${qemu}:${st.ino}:${st.mtimeMs}`;
  } catch {
    return "unknown";
  }
  const known = versions.get(stamp);
  if (known) return known;
  const r = spawnSync(qemu, ["--version"], { encoding: "utf8", env: { PATH: process.env.PATH }, timeout: 10_000 });
  const v = (r.stdout ?? "").split("\n")[0]!.trim().slice(0, 200) || "unknown";
  versions.set(stamp, v);
  return v;
}

/** The spec a template VM boots with: the sandbox's, with what differs per sandbox and is in the saved state made common. */
export function templateSpec(spec: SandboxSpec): SandboxSpec {
  return { ...spec, hostname: SNAPSHOT_HOSTNAME };
}

/**
 * Where the snapshot for this VM shape lives and under which key; null
 * when an artifact is missing (the boot then fails on its own, clearly).
 */
export function snapshotPlan(spec: SandboxSpec, data: DataLayer, accel: "kvm" | "tcg", qemu: string, agent: string): SnapshotPlan | null {
  const boot = spec.vm!;
  // The agent's digest is kept in memory only (locating the agent took it already, ~1 ms for its 1 MiB): its
  // directory is the package's, which may be read-only or another user's; the artifacts' are the cache's own.
  const digests = [...[boot.kernel, boot.initramfs, boot.root_image].map((p) => sha256FileCached(p)), rememberedFileSha256(agent)];
  if (digests.some((d) => d === null)) return null;
  // The argv with placeholders where each VM's own paths go (they are not in the saved state). A VM with network
  // is its own shape: the template's argv has the virtio-net device (on its hub port) and the addresses' words.
  const placeholders: VmBootFiles = { kernel: "@kernel", initramfs: "@initramfs", root_image: "@root" };
  const argv = qemuArgs(templateSpec(spec), placeholders, data, { qmp: "@qmp", netFd: "template" }, accel, undefined, true);
  const key = createHash("sha256")
    .update(JSON.stringify({ format: FORMAT, argv, digests, qemu: qemuVersion(qemu) }))
    .digest("hex")
    .slice(0, 32);
  const dir = join(dirname(boot.root_image), "snapshots");
  return { key, dir, bin: join(dir, `${key}.bin`), meta: join(dir, `${key}.json`), lock: join(dir, `${key}.lock`) };
}

/** The snapshot's record if it is there and whole (its size is the recorded one); null otherwise. The content is checked as it streams. */
export function readSnapshot(plan: SnapshotPlan): SnapshotMeta | null {
  const m = readJsonOrNull<SnapshotMeta>(plan.meta);
  if (!m || m.format !== FORMAT || m.key !== plan.key || typeof m.sha256 !== "string" || !/^[0-9a-f]{64}$/.test(m.sha256) || !Number.isSafeInteger(m.bytes)) return null;
  try {
    const st = statSync(plan.bin);
    return st.isFile() && st.size === m.bytes ? m : null;
  } catch {
    return null;
  }
}

/** Forgets a snapshot that failed to restore: the record first, so no reader takes a half-removed pair for whole. */
export function removeSnapshot(plan: SnapshotPlan): void {
  rmSync(plan.meta, { force: true });
  rmSync(plan.bin, { force: true });
}

/** Temp files of earlier makers of this key; only the key's lock holder may call this (no live maker is writing them). */
export function sweepTemps(plan: SnapshotPlan): void {
  let names: string[] = [];
  try {
    names = readdirSync(plan.dir);
  } catch {
    return;
  }
  for (const n of names) if (n.startsWith(`${plan.key}.bin.tmp-`)) rmSync(join(plan.dir, n), { force: true });
}

export function tempPath(plan: SnapshotPlan): string {
  ensureDir(plan.dir, 0o755);
  return `${plan.bin}.tmp-${process.pid}`;
}

/**
 * A unix socket that takes qemu's outgoing migration (`migrate` to
 * `unix:PATH`: qemu's seccomp sandbox forbids the `exec:` transport) and
 * writes it to `temp`, hashing as it goes. Resolves with the size and
 * sha256 once qemu closed the stream.
 */
export function migrationSink(socketPath: string, temp: string): { server: Server; listening: Promise<void>; done: Promise<{ bytes: number; sha256: string }> } {
  rmSync(socketPath, { force: true });
  let resolveDone!: (v: { bytes: number; sha256: string }) => void;
  let rejectDone!: (e: Error) => void;
  const done = new Promise<{ bytes: number; sha256: string }>((res, rej) => {
    resolveDone = res;
    rejectDone = rej;
  });
  done.catch(() => undefined);
  let taken = false;
  const server = createServer((sock: Socket) => {
    if (taken) return void sock.destroy();
    taken = true;
    server.close();
    const out = createWriteStream(temp, { flags: "wx", mode: 0o644 });
    const hash = createHash("sha256");
    let bytes = 0;
    sock.on("data", (b: Buffer) => {
      hash.update(b);
      bytes += b.length;
      if (!out.write(b)) {
        sock.pause();
        out.once("drain", () => sock.resume());
      }
    });
    sock.on("error", (e) => rejectDone(new Error(`the migration stream failed: ${e.message}`)));
    out.on("error", (e) => {
      sock.destroy();
      rejectDone(new Error(`cannot write the snapshot ${temp}: ${e.message}`));
    });
    sock.on("end", () => out.end(() => out.close(() => resolveDone({ bytes, sha256: hash.digest("hex") }))));
  });
  const listening = new Promise<void>((res, rej) => {
    server.once("error", rej);
    server.listen(socketPath, () => res());
  });
  return { server, listening, done };
}

/** Renames a finished temp into place and records it: the record last, so a reader never sees a record without its whole file. */
export function commitSnapshot(plan: SnapshotPlan, temp: string, made: { bytes: number; sha256: string }, qemu: string): SnapshotMeta {
  const meta: SnapshotMeta = { format: FORMAT, key: plan.key, bytes: made.bytes, sha256: made.sha256, made_at: new Date().toISOString(), qemu_version: qemuVersion(qemu) };
  rmSync(plan.meta, { force: true });
  renameSync(temp, plan.bin);
  // Hashed as it was written, by us, under the key's lock: its identity after the rename (which changes its ctime) is the checked one.
  meta.stamp = contentStamp(statSync(plan.bin, { bigint: true }));
  writeJsonAtomic(plan.meta, meta);
  return meta;
}

/**
 * The snapshot's file, opened for a restoring qemu to read itself (`-incoming
 * fd:N`, the fd passed through the jail and the supervisor): qemu loads from
 * the page cache at its own pace instead of through a socket pyro pumps. The
 * content is checked against the recorded sha256 before qemu gets it: once,
 * then remembered in the record with the file's identity (device, inode,
 * size, mtime, ctime: any write to the file changes its ctime, which only the
 * kernel sets), as the VM artifacts' digests are (environments/vm/store.ts).
 * The identity is the open fd's, so the bytes qemu reads are the checked ones
 * unless written afterwards, which a later restore's check sees.
 * A damaged file rejects (the fd closed): the caller removes it and boots cold.
 */
export async function openSnapshot(plan: SnapshotPlan, meta: SnapshotMeta): Promise<number> {
  const fd = openSync(plan.bin, "r");
  try {
    const stamp = contentStamp(fstatSync(fd, { bigint: true }));
    if (meta.stamp === stamp) return fd;
    const { bytes, sha256 } = await hashFd(fd);
    if (bytes !== meta.bytes || sha256 !== meta.sha256) throw new Error(`the snapshot ${plan.bin} is damaged (its sha256 is not the recorded one)`);
    if (contentStamp(fstatSync(fd, { bigint: true })) !== stamp) throw new Error(`the snapshot ${plan.bin} changed while it was checked`);
    // Remembered for the next restore, without the key's lock: a write lost to another restore's costs one more
    // hash; one that lands over a new maker's record names the old file's identity, so the next restore hashes the
    // new file, finds it is not this record's, and remakes it (a cold boot, nothing wrong run).
    if (readSnapshot(plan)?.sha256 === meta.sha256) writeJsonAtomic(plan.meta, { ...meta, stamp } satisfies SnapshotMeta, { durable: false });
    return fd;
  } catch (error) {
    closeSync(fd);
    throw error;
  }
}

async function hashFd(fd: number): Promise<{ bytes: number; sha256: string }> {
  const hash = createHash("sha256");
  const buf = Buffer.allocUnsafe(1 << 20);
  let bytes = 0;
  for (;;) {
    // Positioned reads: the fd's offset stays at 0 for qemu.
    const { bytesRead } = await new Promise<{ bytesRead: number }>((res, rej) => read(fd, buf, 0, buf.length, bytes, (e, n) => (e ? rej(e) : res({ bytesRead: n }))));
    if (bytesRead <= 0) break;
    hash.update(buf.subarray(0, bytesRead));
    bytes += bytesRead;
  }
  return { bytes, sha256: hash.digest("hex") };
}
