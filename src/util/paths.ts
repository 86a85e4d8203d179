import { homedir } from "node:os";
import { join, resolve } from "node:path";
import { existsSync } from "node:fs";

/** Where environments are cached: $PYRO_CACHE_DIR, else $XDG_CACHE_HOME/pyro-mcp, else ~/.cache/pyro-mcp. */
export function cacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.PYRO_CACHE_DIR) return resolve(env.PYRO_CACHE_DIR);
  if (env.XDG_CACHE_HOME) return join(resolve(env.XDG_CACHE_HOME), "pyro-mcp");
  return join(homedir(), ".cache", "pyro-mcp");
}

/** Where VM and task records live: $PYRO_STATE_DIR, else $XDG_STATE_HOME/pyro-mcp, else ~/.local/state/pyro-mcp. */
export function stateDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.PYRO_STATE_DIR) return resolve(env.PYRO_STATE_DIR);
  if (env.XDG_STATE_HOME) return join(resolve(env.XDG_STATE_HOME), "pyro-mcp");
  return join(homedir(), ".local", "state", "pyro-mcp");
}

/** The package root (the directory holding package.json), from source or from dist/. */
export function packageRoot(): string {
  let dir = new URL(".", import.meta.url).pathname;
  for (let i = 0; i < 5; i++) {
    if (existsSync(join(dir, "package.json"))) return dir.replace(/\/$/, "");
    dir = resolve(dir, "..");
  }
  throw new Error("pyro-mcp: cannot find the package root");
}
