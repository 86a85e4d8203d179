/**
 * The load order of the modules a guest needs: each module after the ones
 * its `depends=` names, modules built into the kernel skipped (they need no
 * loading, and a module may depend on one only when it is a module: then it
 * is not in modules.builtin). Depth-first in the order asked, so the result
 * is stable for a given kernel.
 */
export class ModuleOrderError extends Error {
  override readonly name = "ModuleOrderError";
}

export interface ModuleOrderInput {
  /** Normalized names asked for, in the order wanted. */
  wanted: readonly string[];
  /** The depends of a module the package ships; undefined when it ships none of that name (read lazily: only needed modules are opened). */
  dependsOf: (name: string) => readonly string[] | undefined;
  /** Names built into the kernel (modules.builtin). */
  builtin: ReadonlySet<string>;
}

export interface ModuleOrder {
  /** Modules to load, dependencies first. */
  order: string[];
  /** Asked-for or depended-on names that are built in. */
  builtin: string[];
}

export function resolveModuleOrder(input: ModuleOrderInput): ModuleOrder {
  const order: string[] = [];
  const builtin: string[] = [];
  const done = new Set<string>();
  const visiting: string[] = [];
  const visit = (name: string, neededBy: string | null) => {
    if (done.has(name)) return;
    if (input.builtin.has(name)) {
      done.add(name);
      builtin.push(name);
      return;
    }
    const cycleAt = visiting.indexOf(name);
    if (cycleAt >= 0) throw new ModuleOrderError(`modules depend on each other in a cycle: ${[...visiting.slice(cycleAt), name].join(" -> ")}`);
    const deps = input.dependsOf(name);
    if (!deps) {
      throw new ModuleOrderError(
        neededBy ? `module ${name}, which ${neededBy} depends on, is neither in the kernel package nor built in` : `module ${name} is neither in the kernel package nor built in`,
      );
    }
    visiting.push(name);
    for (const d of deps) visit(d, name);
    visiting.pop();
    done.add(name);
    order.push(name);
  };
  for (const w of input.wanted) visit(w, null);
  return { order, builtin };
}

/** modules.builtin: one path per line (kernel/fs/ext4/ext4.ko), as module names. */
export function parseModulesBuiltin(text: string): Set<string> {
  const out = new Set<string>();
  for (const line of text.split("\n")) {
    const base = line.trim().split("/").pop() ?? "";
    const m = /^(.+)\.ko$/.exec(base);
    if (m) out.add(m[1]!.replace(/-/g, "_"));
  }
  return out;
}
