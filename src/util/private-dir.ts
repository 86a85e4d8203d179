import { statSync } from "node:fs";
import { PyroError } from "../core/errors.js";

/**
 * Refuses a directory of pyro's (the state or cache directory, what is in
 * them) that another user owns or may write: whoever can rename entries in
 * it can plant what pyro reads there as its own (a record whose sandbox
 * names a host process, which the reaper kills; an environment a root pyro
 * boots and hands to the sandbox uid). A predictable path in /tmp that
 * another user made first was used as it was. `rootSticky` allows a
 * top directory that is root's and sticky (/tmp itself: others cannot
 * rename our entries there); what is inside must then be checked too.
 * A missing directory passes (pyro makes it, mode 700).
 */
export function refuseSharedDir(path: string, what: string, options: { rootSticky?: boolean; hint: string }): void {
  const uid = process.getuid?.();
  if (uid === undefined) return;
  const st = statSync(path, { throwIfNoEntry: false });
  if (!st) return;
  const sticky = (st.mode & 0o1000) !== 0;
  let why: string | null = null;
  if (st.uid !== uid && !(options.rootSticky && st.uid === 0 && sticky)) why = `it is owned by uid ${st.uid}, not ${uid}`;
  else if ((st.mode & 0o022) !== 0 && !sticky) why = `its mode is ${(st.mode & 0o777).toString(8)}: others may write it`;
  if (!why) return;
  throw new PyroError("invalid_state", `Refusing the ${what} ${path}: ${why}, so another user could plant what pyro reads there.`, { hint: options.hint, details: { path } });
}
