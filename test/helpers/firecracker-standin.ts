import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { FirecrackerDriver, type FirecrackerHost } from "../../src/drivers/firecracker/driver.js";

const ROOT = new URL("../../", import.meta.url).pathname;
const AGENT = join(ROOT, "guest", "build", "pyro-agent");

/**
 * A copy of the stand-in for the firecracker binary (firecracker-standin.mjs)
 * in `dir`, refusing the API path `refuse` with 400 if given, and a
 * firecracker driver whose host check names it: the driver as the product
 * runs it, with the one thing this host cannot give (a Firecracker on a
 * working KVM) played by the stand-in. `tunDevice`: the tun device node the
 * driver checks and binds into the jail (a test's own node of char 10:200,
 * where the host's /dev/net/tun is root's alone).
 */
export function standinDriver(dir: string, refuse = "", tunDevice?: string): { driver: FirecrackerDriver; binary: string } {
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const binary = join(dir, "firecracker");
  let text = readFileSync(join(ROOT, "test", "helpers", "firecracker-standin.mjs"), "utf8").replace(/__PYRO_AGENT__/g, AGENT);
  if (refuse) text = text.replace(/__STANDIN_REFUSE__/g, refuse);
  writeFileSync(binary, text, { mode: 0o755 });
  const host: FirecrackerHost = {
    // Available: the stand-in needs no KVM (it never opens /dev/kvm, which here is root's, mode 600).
    support: () => ({ available: true, reason: null, binary, proven: false, checks: [] }),
    ...(tunDevice ? { tunDevice } : {}),
  };
  return { driver: new FirecrackerDriver(host), binary };
}
