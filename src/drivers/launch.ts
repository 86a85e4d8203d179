import type { SandboxOwner } from "../util/sandbox-user.js";

/**
 * `pyro-agent launch` (guest/launch.c): how a root pyro starts what runs as
 * the sandbox uid (the namespace driver's bwrap, a VM's jail, passt). In a
 * mount namespace of its own it binds each source under LAUNCH_STAGE at its
 * own host path (so the sandbox uid can reach it and argv still names the
 * sandbox's directory, which cleanupDir and the reaper look for), clears
 * its groups, takes the sandbox uid and execs the command. One builder for
 * every driver, so that what each launch carries (`--parent` above all: a
 * launcher whose starter died before it exec'd starts nothing) cannot
 * differ between them.
 */

/** Where the launcher stages what it binds (guest/launch.h LAUNCH_STAGE). */
export const LAUNCH_STAGE = "/run";

/** Where a path the launcher binds is reached by what it runs. */
export function launchStaged(path: string): string {
  return `${LAUNCH_STAGE}/pyro${path}`;
}

export interface Launch {
  agent: string;
  owner: Pick<SandboxOwner, "uid" | "gid">;
  /** Host paths bound at their staged paths. */
  binds: string[];
  /** An ext4 image the launcher loop-mounts at `at`'s staged path instead of binding `at` (the namespace driver's disk). */
  disk?: { image: string; at: string };
  /** A KVM device whose group the launcher keeps as the one supplementary group (guest/launch.c checks it is KVM's). */
  kvmDevice?: string;
}

export function launchCommand(l: Launch, argv: string[]): { file: string; args: string[] } {
  return {
    file: l.agent,
    args: [
      "launch",
      "--uid", String(l.owner.uid),
      "--gid", String(l.owner.gid),
      "--parent", String(process.pid),
      ...(l.kvmDevice ? ["--kvm-device", l.kvmDevice] : []),
      ...l.binds.flatMap((p) => ["--bind", p]),
      ...(l.disk ? ["--disk", l.disk.image, l.disk.at] : []),
      "--",
      ...argv,
    ],
  };
}
