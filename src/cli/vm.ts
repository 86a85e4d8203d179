import type { Command } from "commander";
import { action, emit, intOption } from "./common.js";
import { cliPyro, describeIsolation } from "./runtime.js";
import { splitRunArgv } from "./run.js";
import { writeOrWait } from "./io.js";

function statusText(s: any): string {
  const lines = [
    `${s.vm_id}  ${s.state}${s.running ? " (running)" : ""}  ${s.environment}`,
    `  ${s.vcpu_count} vCPU, ${s.mem_mib} MiB memory, ${s.disk_mib} MiB disk, network ${s.network ? "on" : "off"}, expires ${s.expires_at}`,
    `  isolation: ${describeIsolation(s.isolation)}`,
  ];
  lines.push(`  limits: ${s.limits?.note ?? "said once its sandbox runs"}`);
  return lines.join("\n");
}

export function registerVm(program: Command): void {
  const vm = program
    .command("vm")
    .summary("manage VMs step by step (create, start, exec, status, stop, delete)")
    .description(
      "The VM lifecycle, for when one `pyro run` is not enough: create a VM, start it,\n" +
        "inspect it, then exec one command (which deletes the VM afterwards). VMs expire\n" +
        "after their TTL (default 600 s) even if no pyro process is running.",
    );

  vm.command("create")
    .description("create a VM (nothing runs until start or exec); prints its id")
    .argument("[env]", "environment (default debian:12)")
    .option("--vcpu-count <n>", "CPUs (default 1)", intOption("--vcpu-count"))
    .option("--mem-mib <n>", "memory limit in MiB (default 1024)", intOption("--mem-mib"))
    .option("--disk-mib <n>", "size of the writable layer in MiB (default 8192)", intOption("--disk-mib"))
    .option("--ttl-seconds <n>", "delete automatically after this many seconds (default 600)", intOption("--ttl-seconds"))
    .option("--network", "outbound network (default off)")
    .option("--driver <driver>", "auto, namespace, qemu, firecracker")
    .option("--json", "print JSON")
    .action(
      action(async (env: string | undefined, opts: any) => {
        const pyro = await cliPyro({ driver: opts.driver });
        const s = await pyro.createVm({
          ...(env ? { environment: env } : {}),
          ...(opts.vcpuCount !== undefined ? { vcpu_count: opts.vcpuCount } : {}),
          ...(opts.memMib !== undefined ? { mem_mib: opts.memMib } : {}),
          ...(opts.diskMib !== undefined ? { disk_mib: opts.diskMib } : {}),
          ...(opts.ttlSeconds !== undefined ? { ttl_seconds: opts.ttlSeconds } : {}),
          ...(opts.network ? { network: true } : {}),
        });
        emit(s, Boolean(opts.json), (v) => v.vm_id);
      }),
    );

  for (const [name, summary, method] of [
    ["start", "boot the VM's sandbox", "startVm"],
    ["status", "show a VM's state", "statusVm"],
    ["stop", "stop the VM's sandbox (its disk layer is kept)", "stopVm"],
    ["delete", "stop the VM and remove everything it had", "deleteVm"],
    ["network-info", "show the VM's network configuration", "networkInfoVm"],
  ] as const) {
    vm.command(name)
      .description(summary)
      .argument("<vm_id>", "the VM id")
      .option("--json", "print JSON")
      .action(
        action(async (vmId: string, opts: any) => {
          const pyro = await cliPyro();
          const result = await (pyro[method] as (a: { vm_id: string }) => Promise<any>)({ vm_id: vmId });
          emit(result, Boolean(opts.json), (v) => (name === "delete" ? `deleted ${v.vm_id}` : name === "network-info" ? JSON.stringify(v.network, null, 2) : statusText(v)));
        }),
      );
  }

  vm.command("exec")
    .description("run one command in the VM, then delete the VM; exits with the command's exit code")
    .argument("<vm_id>", "the VM id")
    .argument("[command...]", "the command, after --")
    .option("--timeout-seconds <n>", "kill the command's tree after this many seconds (default 30)", intOption("--timeout-seconds"))
    .option("--json", "print the result as JSON")
    .action(
      action(async (vmId: string, _cmd: string[], opts: any) => {
        const { command } = splitRunArgv(process.argv);
        const pyro = await cliPyro();
        const result = await pyro.execVm(
          { vm_id: vmId, command, ...(opts.timeoutSeconds !== undefined ? { timeout_seconds: opts.timeoutSeconds } : {}) },
          opts.json ? {} : { onStdout: (c) => writeOrWait(process.stdout, c), onStderr: (c) => writeOrWait(process.stderr, c) },
        );
        if (opts.json) emit(result, true, () => "");
        return result.exit_code;
      }),
    );

  vm.command("list")
    .description("list VMs")
    .option("--json", "print JSON")
    .action(
      action(async (opts: any) => {
        const pyro = await cliPyro();
        emit(await pyro.listVms(), Boolean(opts.json), (v) => (v.vms.length ? v.vms.map(statusText).join("\n") : "no VMs"));
      }),
    );

  vm.command("reap")
    .description("delete expired VMs and whatever crashed pyro processes left behind")
    .option("--json", "print JSON")
    .action(
      action(async (opts: any) => {
        const { Pyro } = await import("../sdk/pyro.js");
        const result = await new Pyro({ errorHints: "cli" }).reapExpired();
        emit(result, Boolean(opts.json), (v) => (v.reaped.length ? v.reaped.map((r: any) => `reaped ${r.kind} ${r.id}: ${r.reason}`).join("\n") : "nothing to reap"));
      }),
    );
}
