import { randomBytes } from "node:crypto";
import { PyroError } from "../core/errors.js";

/**
 * Ids are `vm_` or `task_` plus 12 hex digits. They name directories, so an
 * id from outside is checked against this shape before it is ever joined to
 * a path (an id like `../../etc` never reaches the filesystem).
 */
const SHAPES = { vm: /^vm_[0-9a-f]{12}$/, task: /^task_[0-9a-f]{12}$/ } as const;

export function newId(kind: keyof typeof SHAPES): string {
  return `${kind}_${randomBytes(6).toString("hex")}`;
}

export function checkId(kind: keyof typeof SHAPES, id: unknown): string {
  if (typeof id === "string" && SHAPES[kind].test(id)) return id;
  const code = kind === "vm" ? "unknown_vm" : "unknown_task";
  throw new PyroError(code, `${JSON.stringify(id)} is not a ${kind} id (ids look like ${kind}_0123456789ab).`, {
    hint: kind === "vm" ? "List VMs with `pyro vm list`." : "List tasks with `pyro task list`.",
  });
}
