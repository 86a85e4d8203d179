/**
 * A model picks the source_path of task_create and task_sync_push, and the
 * MCP server's default allowed root is the directory it was started in: for
 * a server an MCP client starts in the user's home, that root is the home.
 * What a model must not read through an import there: the home itself
 * (which carries every secret it holds) or a dot-entry of it (~/.ssh,
 * ~/.aws, ~/.config ...), unless the operator allowed that directory itself.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { mcpFixture, stdioClient } from "../helpers/mcp.js";

const text = (r: CallToolResult) => (r.content as Array<{ type: string; text?: string }>).map((c) => c.text ?? "").join("\n");

test("an MCP server started in a home: a model cannot import the home or its dot-entries (keys, credentials)", { timeout: 300_000 }, async (t) => {
  const fx = mcpFixture(t);
  const home = fx.root;
  mkdirSync(join(home, ".ssh"), { mode: 0o700 });
  writeFileSync(join(home, ".ssh", "id_ed25519"), "-----BEGIN OPENSSH PRIVATE KEY----- the host's key\n", { mode: 0o600 });
  mkdirSync(join(home, "project"));
  writeFileSync(join(home, "project", "README"), "a project\n");
  mkdirSync(join(home, ".allowed"));
  writeFileSync(join(home, ".allowed", "notes"), "allowed outright\n");
  // The server's HOME is the root it serves, as when a client starts it in the user's home.
  const { client } = await stdioClient(t, { root: home, env: { ...fx.env, HOME: home } }, ["--profile", "task-full", "--allow-source-root", join(home, ".allowed")]);
  const call = async (name: string, args: Record<string, unknown>) => (await client.callTool({ name, arguments: args })) as CallToolResult;

  for (const source_path of [".ssh", join(home, ".ssh"), ".", home, "/"]) {
    const r = await call("task_create", { environment: "busybox", source_path });
    if (!r.isError) {
      const task_id = (r.structuredContent as { task_id: string }).task_id;
      const read = await call("task_file_read", { task_id, path: source_path.endsWith(".ssh") ? "id_ed25519" : ".ssh/id_ed25519" });
      await call("task_delete", { task_id });
      assert.fail(`task_create with source_path ${source_path} imported the home's secrets: ${JSON.stringify((read.structuredContent as { content?: string } | undefined)?.content ?? text(read)).slice(0, 200)}`);
    }
    assert.match(text(r), /Error \(source_not_allowed\)/, `${source_path}: ${text(r)}`);
    if (source_path !== "/") assert.match(text(r), /home directory|\.ssh/, text(r));
  }

  // A project in the home, and a dot-entry the operator allowed by name, import as before.
  for (const [source_path, file, content] of [["project", "README", "a project\n"], [join(home, ".allowed"), "notes", "allowed outright\n"]] as const) {
    const r = await call("task_create", { environment: "busybox", source_path });
    assert.ok(!r.isError, text(r));
    const task_id = (r.structuredContent as { task_id: string }).task_id;
    const read = await call("task_file_read", { task_id, path: file });
    assert.equal((read.structuredContent as { content: string }).content, content);
    // A push is the same front door: the home's dot-entries stay out of it too.
    const push = await call("task_sync_push", { task_id, source_path: ".ssh" });
    assert.equal(push.isError, true, text(push));
    assert.match(text(push), /Error \(source_not_allowed\)/);
    await call("task_delete", { task_id });
  }
});

// A server run as root in / (a container's default working directory) allows all of /: /etc holds the
// host's own keys (shadow, ssh host keys, TLS private keys), readable to root.
test("a root server allowed all of /: a model cannot import /etc or anything in it", { skip: process.getuid?.() !== 0 && "needs root: /etc's keys are root's", timeout: 300_000 }, async (t) => {
  const fx = mcpFixture(t);
  const keys = `/etc/pyro-import-test-${process.pid}`;
  mkdirSync(keys, { mode: 0o700 });
  t.after(() => rmSync(keys, { recursive: true, force: true }));
  writeFileSync(join(keys, "host_key"), "-----BEGIN OPENSSH PRIVATE KEY----- the host's own\n", { mode: 0o600 });
  writeFileSync(join(fx.root, "README"), "a project\n");
  const { client } = await stdioClient(t, { root: "/", env: fx.env }, ["--profile", "task-full"]);
  const call = async (name: string, args: Record<string, unknown>) => (await client.callTool({ name, arguments: args })) as CallToolResult;
  for (const source_path of [keys, "etc", "/etc"]) {
    const r = await call("task_create", { environment: "busybox", source_path });
    if (!r.isError) {
      const task_id = (r.structuredContent as { task_id: string }).task_id;
      const read = await call("task_file_read", { task_id, path: source_path === keys ? "host_key" : `${keys.slice(5)}/host_key` });
      await call("task_delete", { task_id });
      assert.fail(`task_create with source_path ${source_path} imported the host's keys: ${JSON.stringify((read.structuredContent as { content?: string } | undefined)?.content ?? text(read)).slice(0, 200)}`);
    }
    assert.match(text(r), /Error \(source_not_allowed\)[\s\S]*\/etc/, `${source_path}: ${text(r)}`);
  }
  // A project elsewhere under / imports as before.
  const r = await call("task_create", { environment: "busybox", source_path: fx.root });
  assert.ok(!r.isError, text(r));
  await call("task_delete", { task_id: (r.structuredContent as { task_id: string }).task_id });
});

// /run and /var/lib hold secrets a root server in / reads as well as /etc's: a container's /run/secrets
// (Docker's and Compose's secrets), a pod's /var/run/secrets/kubernetes.io/serviceaccount/token (its API
// credential), a service's keys and database under /var/lib (k3s's server token, postgresql's data).
test("a root server allowed all of /: a model cannot import /run, /var/run or /var/lib or anything in them", { skip: process.getuid?.() !== 0 && "needs root: those secrets are root's", timeout: 300_000 }, async (t) => {
  const fx = mcpFixture(t);
  const name = `pyro-import-test-${process.pid}`;
  const { client } = await stdioClient(t, { root: "/", env: fx.env }, ["--profile", "task-full"]);
  const call = async (tool: string, args: Record<string, unknown>) => (await client.callTool({ name: tool, arguments: args })) as CallToolResult;
  for (const [dir, through] of [["/run", "/var/run"], ["/var/lib", "/var/lib"]] as const) {
    const secrets = join(dir, name);
    mkdirSync(secrets, { mode: 0o700 });
    t.after(() => rmSync(secrets, { recursive: true, force: true }));
    writeFileSync(join(secrets, "token"), "eyJhbGciOi the pod's service account token\n", { mode: 0o600 });
    for (const source_path of [secrets, join(through, name), dir.slice(1)]) {
      const r = await call("task_create", { environment: "busybox", source_path });
      if (!r.isError) {
        const task_id = (r.structuredContent as { task_id: string }).task_id;
        const read = await call("task_file_read", { task_id, path: source_path === dir.slice(1) ? `${name}/token` : "token" });
        await call("task_delete", { task_id });
        assert.fail(`task_create with source_path ${source_path} imported the host's secrets: ${JSON.stringify((read.structuredContent as { content?: string } | undefined)?.content ?? text(read)).slice(0, 200)}`);
      }
      assert.match(text(r), /Error \(source_not_allowed\)/, `${source_path}: ${text(r)}`);
    }
    // A push is the same front door.
    const made = await call("task_create", { environment: "busybox" });
    const task_id = (made.structuredContent as { task_id: string }).task_id;
    const push = await call("task_sync_push", { task_id, source_path: secrets });
    await call("task_delete", { task_id });
    assert.match(text(push), /Error \(source_not_allowed\)/, `push of ${secrets}: ${text(push)}`);
  }
});
