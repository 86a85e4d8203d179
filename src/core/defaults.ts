/**
 * The defaults and bounds of every sandbox setting: what a call gets when it
 * names none, and what the schemas accept. Here, below every layer, because
 * the runtime applies the defaults as much as the front doors validate
 * against the bounds (CONTRACT: "Defaults").
 */
export const DEFAULTS = {
  environment: "debian:12",
  vcpu_count: 1,
  mem_mib: 1024,
  timeout_seconds: 30,
  ttl_seconds: 600,
  network: false,
  pids_max: 1024,
  max_output_bytes: 1024 * 1024,
  /** The writable layer of a task or persistent VM (vm_create): room for a checkout, its dependencies and a build. */
  disk_mib: 8192,
  /** Of a one-shot run (vm_run): a tmpfs, so smaller; it dies with the run. */
  run_disk_mib: 2048,
} as const;

export const LIMITS = {
  vcpu_count: { min: 1, max: 64 },
  mem_mib: { min: 64, max: 262_144 },
  disk_mib: { min: 64, max: 1_048_576 },
  timeout_seconds: { min: 1, max: 86_400 },
  ttl_seconds: { min: 10, max: 30 * 86_400 },
  max_output_bytes: { min: 1024, max: 64 * 1024 * 1024 },
  argv: 4096,
  env: 4096,
} as const;
