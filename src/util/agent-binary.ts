import { existsSync, readFileSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { PyroError } from "../core/errors.js";
import { rememberedFileSha256 } from "./file-sha256.js";
import { packageRoot } from "./paths.js";

/**
 * Where the static guest agent (guest/, pyro-agent) that every driver starts
 * comes from, in this order:
 *
 * 1. `$PYRO_AGENT`: a static pyro-agent given on purpose (development, a
 *    host arch the package carries none for). Used as it is.
 * 2. `guest/build/pyro-agent`: built from source by `make -C guest` (a clone's
 *    `npm run build`; in an installed package only if someone ran make there).
 *    What a clone runs: the agent of the sources beside it.
 * 3. `dist/agent/linux-<arch>/pyro-agent`: the prebuilt, static, stripped
 *    agent the npm package carries for x64 and arm64 (scripts/build.mjs),
 *    picked by `process.arch` and used only if its sha256 is the one
 *    `dist/agent/agents.json` recorded when it was built: a truncated
 *    download or a swapped file is refused, never booted as a sandbox's PID 1.
 *
 * Nothing is written anywhere (an installed package may be read-only); the
 * digest is remembered in memory with the file's identity, so a long-lived
 * process hashes the ~1 MB file once, and again only if it changes.
 */

export type AgentSource = "env" | "built" | "prebuilt";

export interface AgentBinary {
  path: string;
  source: AgentSource;
  /** `sha256:<hex>`: checked against the recorded digest for a prebuilt agent, else as found. */
  sha256: string;
  /** `linux-x64`, `linux-arm64`: the prebuilt's platform key (null for the others). */
  platform: string | null;
}

/** dist/agent/agents.json, written by scripts/build.mjs. */
export interface AgentManifest {
  format: 1;
  version: string;
  agents: Record<string, { path: string; sha256: string; bytes: number }>;
}

export const AGENT_MANIFEST = join("dist", "agent", "agents.json");

/** The platform key of a prebuilt agent: what `process.platform`/`process.arch` say, as npm says it. */
export function agentPlatform(platform: string = process.platform, arch: string = process.arch): string {
  return `${platform}-${arch}`;
}

/** The file's digest, remembered in memory with its identity (util/file-sha256.ts). */
function sha256Of(path: string): string {
  const sha256 = rememberedFileSha256(path);
  if (sha256 === null) throw new PyroError("driver_unavailable", `The guest agent ${path} is gone (it was there a moment ago).`, { hint: "Run the command again; if it persists, rebuild or reinstall pyro-mcp." });
  return sha256;
}

function isFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

/** A clone has the build script; an installed package does not (it is not in package.json "files"). */
export function isClone(root: string): boolean {
  return existsSync(join(root, "scripts", "build.mjs"));
}

function readManifest(root: string): AgentManifest | null {
  try {
    const m = JSON.parse(readFileSync(join(root, AGENT_MANIFEST), "utf8")) as AgentManifest;
    return m && m.format === 1 && typeof m.agents === "object" && m.agents !== null ? m : null;
  } catch {
    return null;
  }
}

export interface LocateOptions {
  env?: NodeJS.ProcessEnv;
  /** The package root (default: this module's package). */
  root?: string;
  platform?: string;
  arch?: string;
}

/** The agent to start, checked; a PyroError (`driver_unavailable`) saying what is wrong and what to do otherwise. */
export function locateAgent(options: LocateOptions = {}): AgentBinary {
  const env = options.env ?? process.env;
  const root = options.root ?? packageRoot();
  const key = agentPlatform(options.platform, options.arch);

  if (env.PYRO_AGENT) {
    const path = resolve(env.PYRO_AGENT);
    if (!isFile(path)) {
      throw new PyroError("driver_unavailable", `PYRO_AGENT names ${path}, which is not a file.`, {
        hint: "Point PYRO_AGENT at a static pyro-agent, or unset it to use the one of the pyro-mcp package.",
      });
    }
    return { path, source: "env", sha256: sha256Of(path), platform: null };
  }

  const built = join(root, "guest", "build", "pyro-agent");
  if (isFile(built)) return { path: built, source: "built", sha256: sha256Of(built), platform: null };

  const clone = isClone(root);
  const manifest = readManifest(root);
  const entry = manifest?.agents[key];
  if (!entry) {
    if (clone) {
      throw new PyroError("driver_unavailable", `The guest agent is not built (${built} is missing).`, {
        hint: "Run `npm run build` (or `make -C guest`; needs gcc, make and libc6-dev) in the clone.",
      });
    }
    if (!key.startsWith("linux-")) {
      throw new PyroError("driver_unavailable", `pyro runs sandboxes on Linux only (this is ${key}).`, { hint: "Run pyro on a Linux host." });
    }
    const carried = manifest ? Object.keys(manifest.agents).sort().join(", ") : "none (its dist/agent/agents.json is missing or unreadable)";
    throw new PyroError("driver_unavailable", `This pyro-mcp package carries no guest agent for ${key} (it carries: ${carried}).`, {
      hint: manifest
        ? `Build one from the sources the package carries: \`make -C ${join(root, "guest")}\` (needs gcc, make and libc6-dev), or set PYRO_AGENT to a static pyro-agent.`
        : "Reinstall pyro-mcp (npm i pyro-mcp, or npm ci in your project): the package is incomplete.",
    });
  }

  const path = join(root, "dist", "agent", entry.path);
  const reinstall = clone ? "Run `npm run build` in the clone." : "Reinstall pyro-mcp (npm i pyro-mcp, or npm ci in your project); PYRO_AGENT=PATH runs another static pyro-agent on purpose.";
  if (!isFile(path)) {
    throw new PyroError("driver_unavailable", `The prebuilt guest agent for ${key} is missing (${path}): the package is incomplete.`, { hint: reinstall });
  }
  const found = sha256Of(path);
  if (found !== entry.sha256) {
    throw new PyroError("driver_unavailable", `The prebuilt guest agent ${path} does not match the digest recorded when the package was built (recorded ${entry.sha256}, found ${found}): it was damaged or changed, and is not started.`, {
      hint: reinstall,
    });
  }
  return { path, source: "prebuilt", sha256: found, platform: key };
}

/** The path of the agent to start (locateAgent's, which throws when there is none to use). */
export function agentBinaryPath(options: LocateOptions = {}): string {
  return locateAgent(options).path;
}
