import { chmodSync, lchownSync, lstatSync, readdirSync, readFileSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { PyroError } from "../core/errors.js";

/**
 * The host uid and gid that a sandbox's root maps to.
 *
 * As an unprivileged user, a sandbox's root is that user outside (a user
 * namespace of one uid). As root, mapping the sandbox's root to host root
 * would make every file the kernel checks by uid alone (global sysctls in a
 * fresh /proc, files of the host reached through any leak) writable from
 * inside. So when pyro runs as root, sandboxes run as one dedicated
 * unprivileged uid (PYRO_SANDBOX_UID, default 2000000000, gid the same),
 * which owns the environments' root filesystems and the sandboxes' writable
 * layers and nothing else on the host.
 */
export const DEFAULT_SANDBOX_UID = 2_000_000_000;

export interface SandboxOwner {
  uid: number;
  gid: number;
}

const MAX_ID = 4_294_967_294; // (uid_t)-1 means "no change" to chown

/** Names that already use an id in /etc/passwd or /etc/group (field 3). */
function usersOf(file: string, id: number): string[] {
  try {
    return readFileSync(file, "utf8")
      .split("\n")
      .filter((line) => line.split(":")[2] === String(id))
      .map((line) => line.split(":")[0]!);
  } catch {
    return [];
  }
}

let checked: { key: string; owner: SandboxOwner } | null = null;

/** The owner sandboxes run as, or null when pyro does not run as root (the sandbox's root is then the invoking user). */
export function sandboxOwner(env: NodeJS.ProcessEnv = process.env): SandboxOwner | null {
  if (process.getuid?.() !== 0) return null;
  const text = env.PYRO_SANDBOX_UID;
  const key = text ?? "";
  if (checked?.key === key) return checked.owner;
  let uid = DEFAULT_SANDBOX_UID;
  if (text !== undefined && text !== "") {
    uid = /^\d{1,10}$/.test(text) ? Number(text) : NaN;
    if (!Number.isInteger(uid) || uid < 1 || uid > MAX_ID) {
      throw new PyroError("invalid_argument", `PYRO_SANDBOX_UID must be an unprivileged uid (1..${MAX_ID}), got "${text}".`, {
        hint: "Pick a uid no account on this host uses, e.g. PYRO_SANDBOX_UID=2000000000, or unset it.",
      });
    }
  }
  // Chosen or default: an account's uid would give sandboxes that account's files (they own the trees).
  const taken = [...usersOf("/etc/passwd", uid), ...usersOf("/etc/group", uid)];
  if (taken.length) {
    throw new PyroError("driver_unavailable", `The sandbox uid ${uid} is already used on this host (by ${taken.join(", ")}), so sandboxes cannot run as root safely.`, {
      hint: "Set PYRO_SANDBOX_UID to a uid no account uses, or run pyro as an unprivileged user.",
    });
  }
  const owner = { uid, gid: uid };
  checked = { key, owner };
  return owner;
}

/**
 * Gives every entry of a tree to one owner (lchown: symlinks are never
 * followed, and directories are listed by the path just checked with lstat,
 * so only use it on trees nothing is changing). Set-id bits are put back
 * (chown clears them on regular files), unless `stripSetId`: a new tree
 * needs none (every command runs with no_new_privs, which ignores them), and
 * a set-uid binary of the sandbox uid is a way to become that uid for anyone
 * who can reach it. Trees handed over from older releases keep them, so
 * their recorded digest still holds; the environments directory is private
 * (mode 700) either way. The top directory is changed last: its owner says
 * the whole tree is done.
 */
export async function chownTree(root: string, owner: SandboxOwner, options: { removeDevices?: boolean; stripSetId?: boolean; signal?: AbortSignal } = {}): Promise<void> {
  const stack = [root];
  let n = 0;
  while (stack.length) {
    const dir = stack.pop()!;
    for (const name of readdirSync(dir)) {
      const p = join(dir, name);
      const st = lstatSync(p);
      if (options.removeDevices && (st.isCharacterDevice() || st.isBlockDevice())) {
        unlinkSync(p);
        continue;
      }
      if (st.uid !== owner.uid || st.gid !== owner.gid) {
        lchownSync(p, owner.uid, owner.gid);
        if (!st.isSymbolicLink() && st.mode & 0o6000 && !(options.stripSetId && st.isFile())) chmodSync(p, st.mode & 0o7777);
      } else if (options.stripSetId && st.isFile() && st.mode & 0o6000) {
        chmodSync(p, st.mode & 0o1777);
      }
      if (st.isDirectory()) stack.push(p);
      if (++n % 2000 === 0) {
        await new Promise((r) => setImmediate(r));
        if (options.signal?.aborted) throw options.signal.reason ?? new PyroError("cancelled", "Cancelled.");
      }
    }
  }
  const top = lstatSync(root);
  if (top.uid !== owner.uid || top.gid !== owner.gid) lchownSync(root, owner.uid, owner.gid);
}

/** Whether a tree's top directory already belongs to the owner (chownTree finishes with it). */
export function ownedBy(path: string, owner: SandboxOwner): boolean {
  try {
    const st = lstatSync(path);
    return st.uid === owner.uid && st.gid === owner.gid;
  } catch {
    return false;
  }
}
