// `pyro doctor` and scripts/setup.sh name the same packages: setup installs
// every package doctor may ask for, and doctor asks for nothing setup leaves out
// (it once listed slirp4netns as missing, which pyro never runs).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { DEV_PACKAGES, doctor, hostTools, setupPackages } from "../../src/operations/doctor.js";

const SETUP = readFileSync(new URL("../../scripts/setup.sh", import.meta.url), "utf8");

/** setup.sh's PACKAGES on an architecture (its $QEMU resolved as the script does). */
function setupList(arch: "x64" | "arm64"): string[] {
  const body = /PACKAGES=\(([^)]*)\)/.exec(SETUP)![1]!;
  const qemu = arch === "arm64" ? "qemu-system-arm" : "qemu-system-x86";
  return body.split(/\s+/).filter(Boolean).map((p) => (p === '"$QEMU"' ? qemu : p));
}

test("setup.sh installs exactly the packages of doctor's tools, on x86_64 and aarch64", () => {
  for (const arch of ["x64", "arm64"] as const) assert.deepEqual([...setupList(arch)].sort(), [...setupPackages(arch)].sort(), arch);
});

test("doctor lists only tools pyro runs, and asks only for packages setup installs", async () => {
  assert.ok(!hostTools().some((t) => t.name === "slirp4netns"), "no slirp4netns: pyro's network is pasta");
  const r = await doctor({});
  const allowed = new Set(setupPackages().filter((p) => !DEV_PACKAGES.includes(p)));
  for (const p of r.missing_packages) assert.ok(allowed.has(p), `doctor asks for ${p}, which setup.sh does not install (or only a developer needs)`);
  assert.deepEqual(r.tools.map((t) => t.name), hostTools().map((t) => t.name));
  if (r.install_command) assert.match(r.install_command, /apt-get install -y /);
});
