import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream, readdirSync, renameSync, rmSync, statSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { connectUnixNoFollow } from "../../util/unix-socket.js";
import { dirname, join } from "node:path";
import { ensureDir, readJsonOrNull, writeJsonAtomic } from "../../util/fsutil.js";
import { sha256FileCached } from "../../environments/vm/store.js";
import { rememberedFileSha256 } from "../../util/file-sha256.js";
import type { SandboxSpec, VmBootFiles } from "../types.js";
import { qemuArgs, type DataLayer } from "./args.js";

/**
 * Snapshots of one-shot VMs (docs/drivers.md, "Snapshots"): a VM booted
 * once to its agent, paused and migrated to a file, which later one-shot
 * runs of the same shape restore instead of booting (TCG: ~0.2 s, not ~2.5 s).
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
  // The argv with placeholders where each VM's own paths go (they are not in the saved state).
  const placeholders: VmBootFiles = { kernel: "@kernel", initramfs: "@initramfs", root_image: "@root" };
  const argv = qemuArgs(templateSpec(spec), placeholders, data, { qmp: "@qmp" }, accel, undefined, true);
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
  writeJsonAtomic(plan.meta, meta);
  return meta;
}

/**
 * Feeds a snapshot to a qemu started with `-incoming unix:PATH`: connects
 * (qemu makes the socket late in its start-up), streams the file and checks
 * its sha256 on the way. A mismatch rejects after the last byte: the caller
 * kills the VM, which never answered as ready.
 */
export async function feedSnapshot(bin: string, meta: SnapshotMeta, socketPath: string, timeoutMs: number, gone: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let sock: Socket;
  for (;;) {
    const s = connectUnixNoFollow(socketPath); // run/ is the VM uid's: never through a link planted there
    const error = await new Promise<Error | null>((resolve) => {
      s.once("connect", () => resolve(null));
      s.once("error", resolve);
    });
    if (!error) {
      sock = s;
      break;
    }
    s.destroy();
    if (gone()) throw new Error("qemu exited before it took the snapshot");
    if (Date.now() > deadline) throw new Error(`qemu did not open ${socketPath} for the snapshot: ${error.message}`);
    await new Promise((r) => setTimeout(r, 5));
  }
  const hash = createHash("sha256");
  let bytes = 0;
  try {
    await new Promise<void>((resolve, reject) => {
      const input = createReadStream(bin, { highWaterMark: 1 << 20 });
      sock.on("error", (e) => {
        input.destroy();
        reject(new Error(`qemu stopped reading the snapshot: ${e.message}`));
      });
      input.on("error", (e) => {
        sock.destroy();
        reject(new Error(`cannot read the snapshot: ${e.message}`));
      });
      input.on("data", (b) => {
        const chunk = b as Buffer;
        hash.update(chunk);
        bytes += chunk.length;
        if (!sock.write(chunk)) {
          input.pause();
          sock.once("drain", () => input.resume());
        }
      });
      input.on("end", () => sock.end(() => resolve()));
    });
  } finally {
    sock.destroy();
  }
  const sha256 = hash.digest("hex");
  if (bytes !== meta.bytes || sha256 !== meta.sha256) throw new Error(`the snapshot ${bin} is damaged (its sha256 is not the recorded one)`);
}
