import { realpathSync } from "node:fs";
import { delimiter, isAbsolute, relative, resolve, sep } from "node:path";
import { inside } from "./source-path.js";
import { homeDirs } from "./homes.js";

/**
 * Where a file from a sandbox must never land on the host, because the host
 * runs what is there without anyone choosing to run it: a user's startup
 * files and configuration (`~/.bashrc`, `~/.profile`, `~/.ssh`, `~/.config`
 * with its autostart and systemd units, `~/.local/bin`), a directory of the
 * host's PATH (a file named `ls` there replaces `ls`), the host's own system
 * directories (/etc, /usr, /boot, /lib, /var/spool, /var/lib, /run), and a repository's
 * metadata (`.git/hooks`, and `.git/config`, whose `core.fsmonitor` or
 * `core.pager` run on every `git status`, a shell prompt's included;
 * Mercurial's `.hg/hgrc` hooks likewise). Code an agent wrote is meant to be run by its user,
 * eventually and knowingly; these run at the next login or `git` command.
 */

/** Why a target path (absolute, its parent's real path joined with its name) may not receive an export, or null. */
export function hostRunsFrom(target: string, env: NodeJS.ProcessEnv = process.env): string | null {
  for (const home of homeDirs()) {
    if (inside(home, target)) return `it is ${target === home ? "" : "above "}the home directory ${home}, whose startup files and configuration the host runs`;
    if (inside(target, home)) {
      const first = relative(home, target).split(sep)[0]!;
      if (first.startsWith(".")) return `${home}/${first} holds startup files or configuration the host runs`;
    }
  }
  for (const dir of pathDirs(env)) {
    if (inside(target, dir) || inside(dir, target)) return `${dir} is on the host's PATH: a file there replaces a command`;
  }
  for (const dir of SYSTEM_DIRS.map(real)) {
    if (inside(target, dir) || inside(dir, target)) return `${dir} is one of the host's own system directories, whose files its services, cron and logins run or load`;
  }
  const meta = target.split(sep).find((p) => VCS_METADATA.has(p));
  if (meta) return `it is inside a repository's metadata (${meta}), whose hooks and config the host's ${meta === ".git" ? "git" : "hg"} runs`;
  return null;
}

/**
 * The host's own configuration and code: cron.d, profile.d, systemd units,
 * sudoers.d and ld.so.preload under /etc, libraries and units under /usr and
 * /lib, the boot loader, cron's spool. Only root can write there, and a
 * root server whose allowed root is / (one started in /, as in a container)
 * would otherwise let a model merge a cron job into /etc/cron.d.
 * /run holds runtime configuration the host loads as it does /etc's: kmod
 * runs the `install` commands of /run/modprobe.d at the next module
 * autoload (any local user triggers one with a socket of an unloaded
 * family), udev the RUN+= of /run/udev/rules.d at the next uevent, systemd
 * loads units from /run/systemd (a user's from /run/user/UID/systemd).
 * /var/lib holds services' state that they run or obey: cloud-init's
 * /var/lib/cloud/scripts/per-boot at every boot, polkit's
 * /var/lib/polkit-1/localauthority grants, dpkg's maintainer scripts.
 */
const SYSTEM_DIRS = ["/etc", "/usr", "/boot", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/var/spool", "/var/lib", "/run"];

/** Version control metadata whose hooks and config run on the host (never exported, at any depth). */
const VCS_METADATA = new Set([".git", ".hg"]);

/** Whether an exported entry's workspace-relative path is repository metadata (never exported, at any depth). */
export function isRepoMetadata(rel: string): boolean {
  return rel.split("/").some((p) => VCS_METADATA.has(p));
}

function real(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return resolve(path);
  }
}

function pathDirs(env: NodeJS.ProcessEnv): string[] {
  return (env.PATH ?? "")
    .split(delimiter)
    .filter((d) => isAbsolute(d) && resolve(d) !== "/")
    .map(real);
}
