import { chmodSync, closeSync, constants, fstatSync, lstatSync, openSync, readdirSync, renameSync, rmdirSync, unlinkSync, type Stats } from "node:fs";
import { rm } from "node:fs/promises";
import { randomBytes } from "node:crypto";

/**
 * Trees a sandbox wrote on the host's disk (an unprivileged user's writable
 * layer, `sandbox/rw/upper`): measured and removed whatever the sandbox
 * made of them. Inside an unprivileged sandbox every file belongs to the
 * user running pyro, and the sandbox's root may chmod a directory to 000 or
 * nest directories thousands deep; on the host that same user then cannot
 * list the directory, and paths into it pass PATH_MAX. A walk that skipped
 * such a directory would let a sandbox hide its bytes from the disk quota,
 * and a removal that gave up on it would leave them on the host forever.
 *
 * Nothing here follows a symlink: every name is looked up in a held
 * directory descriptor (`/proc/self/fd/N/name`), every directory entered
 * is checked to be the one listed, and a mode is changed only through an
 * O_PATH handle on that very inode (never by a name a sandbox could swap
 * for a symlink to a host file).
 */

/** O_PATH (Linux, x86-64 and arm64): a handle that opens nothing, enough to chmod the inode it names. */
const O_PATH = 0o10000000;
const DIR = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;
/** What an inode costs the host's disk at least, even empty (an inode table entry, a directory entry). */
export const MIN_ENTRY_BYTES = 4096;
/** Directories held open at once by a measurement: a tree nested deeper is not measured (and says so). */
export const MAX_MEASURE_DEPTH = 512;
/** Entries a measurement looks at between two turns of the event loop. */
const YIELD_EVERY = 1000;
/** How deep a removal descends before moving the subtree up to the top (so it never needs long paths or many fds). */
const REMOVE_DEPTH = 64;

const at = (fd: number, name: string) => `/proc/self/fd/${fd}/${name}`;

export interface LayerUsage {
  /** Bytes the tree takes on its disk: blocks, and at least MIN_ENTRY_BYTES per entry. */
  allocated: number;
  files: number;
  /** The first directory the walk could not measure (nested past MAX_MEASURE_DEPTH, or unreadable whatever was tried), relative to the root; null when all was measured. */
  unmeasured: string | null;
}

/**
 * Opens a directory (a name just listed as `st`, or the tree's top) for
 * reading. One its owner made unreadable is given u+rwx through an O_PATH
 * handle first; the caller gets the mode to put back when `keepMode` (null
 * when nothing changed). Throws when the name is no longer that directory.
 */
function enter(path: string, st: Stats, keepMode: boolean): { fd: number; restore: number | null } {
  if ((st.mode & 0o700) === 0o700) {
    const fd = openSync(path, DIR);
    if (!same(fd, st)) (closeSync(fd), fail(path));
    return { fd, restore: null };
  }
  const handle = openSync(path, O_PATH | constants.O_NOFOLLOW);
  try {
    if (!same(handle, st)) fail(path);
    // Through the handle's own /proc link: the inode checked above, whatever the name points at now.
    chmodSync(`/proc/self/fd/${handle}`, (st.mode & 0o7777) | 0o700);
    let fd: number;
    try {
      // Without O_NOFOLLOW: the /proc link is followed to the handle's own inode (O_NOFOLLOW would refuse it as a link).
      fd = openSync(`/proc/self/fd/${handle}`, constants.O_RDONLY | constants.O_DIRECTORY);
    } catch (error) {
      if (keepMode) chmodSync(`/proc/self/fd/${handle}`, st.mode & 0o7777);
      throw error;
    }
    return { fd, restore: keepMode ? st.mode & 0o7777 : null };
  } finally {
    closeSync(handle);
  }
}

/** Puts back a mode enter() changed, through the open directory itself. */
function leave(dir: { fd: number; restore: number | null }): void {
  try {
    if (dir.restore !== null) chmodSync(`/proc/self/fd/${dir.fd}`, dir.restore);
  } catch {
    /* removed meanwhile */
  } finally {
    closeSync(dir.fd);
  }
}

function same(fd: number, st: Stats): boolean {
  const now = fstatSync(fd);
  return now.isDirectory() && now.dev === st.dev && now.ino === st.ino;
}

function fail(name: string): never {
  throw Object.assign(new Error(`${name} changed while it was opened`), { code: "ESTALE" });
}

/**
 * What a writable layer takes on the host's disk, for the disk quota pyro
 * checks where the kernel keeps none. Directories the sandbox made
 * unreadable are entered (their mode is put back at once); a tree nested
 * past MAX_MEASURE_DEPTH, or one that cannot be entered at all, is named in
 * `unmeasured` so the caller can refuse rather than under-count.
 */
export async function measureLayer(root: string): Promise<LayerUsage> {
  const usage: LayerUsage = { allocated: 0, files: 0, unmeasured: null };
  const note = (rel: string) => (usage.unmeasured ??= rel);
  // A sandbox can leave millions of entries (about 7 ms per thousand here): the walk yields to the event
  // loop every YIELD_EVERY of them, so the MCP server or daemon measuring one task keeps serving the others.
  let seen = 0;
  const walk = async (fd: number, rel: string, depth: number): Promise<void> => {
    let names: string[];
    try {
      names = readdirSync(`/proc/self/fd/${fd}`);
    } catch {
      note(rel || ".");
      return;
    }
    for (const name of names) {
      if (++seen % YIELD_EVERY === 0) await new Promise((r) => setImmediate(r));
      const r = rel ? `${rel}/${name}` : name;
      let st: Stats;
      try {
        st = lstatSync(at(fd, name));
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "ENOENT") note(r);
        continue;
      }
      usage.allocated += Math.max(st.blocks * 512, MIN_ENTRY_BYTES);
      if (!st.isDirectory()) {
        usage.files++;
        continue;
      }
      if (depth >= MAX_MEASURE_DEPTH) {
        note(r);
        continue;
      }
      let child: { fd: number; restore: number | null };
      try {
        child = enter(at(fd, name), st, true);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "ENOENT") note(r);
        continue;
      }
      try {
        await walk(child.fd, r, depth + 1);
      } finally {
        leave(child);
      }
    }
  };
  let st: Stats;
  try {
    st = lstatSync(root);
  } catch {
    return usage; // no layer yet
  }
  // The top too: a sandbox's `chmod 000 /` lands on its layer's top directory.
  if (!st.isDirectory()) return usage;
  let top: { fd: number; restore: number | null };
  try {
    top = enter(root, st, true);
  } catch {
    note(".");
    return usage;
  }
  try {
    await walk(top.fd, "", 0);
  } finally {
    leave(top);
  }
  return usage;
}

/**
 * Removes a tree, whatever modes and depth a sandbox left in it: first the
 * ordinary way, then, if that failed (a directory of mode 000, a path past
 * PATH_MAX), entry by entry through held descriptors, giving each directory
 * u+rwx through an O_PATH handle and moving subtrees nested deeper than
 * REMOVE_DEPTH up to the top, so that neither long paths nor many
 * descriptors are needed. Yields to the event loop as it goes.
 */
export async function removeLayerTree(path: string): Promise<void> {
  try {
    await rm(path, { recursive: true, force: true, maxRetries: 3 });
    return;
  } catch {
    /* below */
  }
  let st: Stats;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (!st.isDirectory()) return unlinkSync(path);
  const tag = randomBytes(6).toString("hex");
  let moved = 0;
  let ops = 0;
  const tick = async () => {
    if (++ops % 1000 === 0) await new Promise((r) => setImmediate(r));
  };
  const top = enter(path, st, false).fd;
  const clear = async (fd: number, depth: number): Promise<void> => {
    for (let before = Infinity; ; ) {
      const names = readdirSync(`/proc/self/fd/${fd}`);
      if (names.length === 0) return;
      // Each pass removes its names or moves them up; one that does neither would loop forever.
      if (names.length >= before && fd !== top) throw Object.assign(new Error(`cannot empty a directory of ${path}`), { code: "ENOTEMPTY" });
      before = names.length;
      for (const name of names) {
        await tick();
        let child: Stats;
        try {
          child = lstatSync(at(fd, name));
        } catch {
          continue;
        }
        if (!child.isDirectory()) {
          unlinkSync(at(fd, name));
          continue;
        }
        if (depth >= REMOVE_DEPTH) {
          // Up to the top: its own listing picks it up again, at depth 1.
          renameSync(at(fd, name), at(top, `.pyro-rm-${tag}-${moved++}`));
          continue;
        }
        const { fd: sub } = enter(at(fd, name), child, false);
        try {
          await clear(sub, depth + 1);
        } finally {
          closeSync(sub);
        }
        rmdirSync(at(fd, name));
      }
    }
  };
  try {
    await clear(top, 0);
  } finally {
    closeSync(top);
  }
  rmdirSync(path);
}
