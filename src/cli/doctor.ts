import type { Command } from "commander";
import { action, emit, formatBytes } from "./common.js";
import type { DoctorResult } from "../operations/doctor.js";

/** `pyro doctor [--json]`: what this host can isolate with and what to install. Exit 0 when `auto` finds a driver, 125 when none works. */

function formatDoctor(r: DoctorResult): string {
  const mark = (ok: boolean) => (ok ? "ok  " : "no  ");
  const lines = [
    `platform   ${r.platform.os} ${r.platform.arch}, kernel ${r.platform.kernel}, node ${r.platform.node}, ${r.platform.root ? `root (sandboxes run as uid ${r.platform.sandbox_uid ?? "?"}, never as root)` : `uid ${r.platform.uid}`}`,
    "",
    "drivers",
  ];
  for (const d of r.drivers) {
    const iso = d.isolation ? ` (${d.isolation.kind}${d.isolation.accel ? `, ${d.isolation.accel}` : ""})` : "";
    lines.push(`  ${mark(d.available)}${d.driver}${iso}`);
    for (const c of d.checks) lines.push(`        ${c.ok ? "+" : "-"} ${c.name}: ${c.detail}`);
  }
  lines.push(
    "",
    r.auto
      ? `auto       picks ${r.auto.driver}: isolation ${r.auto.isolation.kind}${r.auto.isolation.accel ? ` (${r.auto.isolation.accel})` : ""}`
      : "auto       no driver works on this host: see the reasons above",
    `cgroups    ${r.cgroups.version}${r.cgroups.hybrid ? " (hybrid: cgroup2 also mounted, without these controllers)" : ""}${r.cgroups.base ? ` at ${r.cgroups.base}` : ""}: ${r.cgroups.controllers.map((c) => `${c.name} ${c.writable ? "writable" : c.available ? "read-only" : "absent"}`).join(", ")}`,
    `limits     a run: ${r.limits.run.note}`,
    `           a task: ${r.limits.task.note}`,
    "",
    "tools",
  );
  for (const t of r.tools) lines.push(`  ${mark(t.found)}${t.name.padEnd(20)} ${t.found ? t.path : `missing${t.package ? ` (apt package ${t.package})` : ""}`}: ${t.purpose}`);
  lines.push(
    "",
    `cache      ${r.cache.dir}${r.cache.free_bytes !== null ? ` (${formatBytes(r.cache.free_bytes)} free)` : ""}`,
    `state      ${r.state_dir}`,
  );
  if (r.install_command) lines.push("", `To install what is missing:\n  ${r.install_command}`);
  return lines.join("\n");
}

export function registerDoctor(program: Command): void {
  program
    .command("doctor")
    .summary("what this host can isolate with, what `auto` picks, what to install")
    .description("Check what this host can isolate with (firecracker, qemu, namespace), what `auto` picks, and what to install")
    .option("--json", "print JSON")
    .addHelpText(
      "after",
      `
Every check is tried for real: bwrap starts a trivial sandbox, /dev/kvm is
opened read-write. The last line is the apt-get command that installs what
is missing. Exit status: 0 when some driver works, 125 when none does.

Examples:
  pyro doctor
  pyro doctor --json | jq .auto`,
    )
    .action(
      action(async (opts: { json?: boolean }) => {
        const { doctor } = await import("../operations/doctor.js");
        const r = await doctor({});
        emit(r, Boolean(opts.json), formatDoctor);
        return r.auto ? 0 : 125;
      }),
    );
}
