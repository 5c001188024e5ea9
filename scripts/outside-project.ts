// A project outside the repository that uses the packages as a user would (issue 18): every package is
// packed (`bun pm pack`, which turns `workspace:*` into the exact shared version), the tarballs are
// installed offline into a fresh folder with its own empty package cache, and each package's examples
// are copied next to them. Third-party dependencies (msgpackr, ...) are packed from this checkout's
// node_modules at the versions bun.lock pins, so nothing is fetched and no cache is needed: the same
// steps work on a GPU machine that has no registry.
//
//   bun scripts/outside-project.ts [DIR]   builds the project in DIR (default: a new temporary folder)
//                                          and prints its path; the caller removes it

import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join, resolve } from "node:path";

export const ROOT = resolve(import.meta.dir, "..");

/** Every package a user can install, in dependency order, by folder. */
export const PACKAGE_DIRS = [
  "kernels",
  "packages/cuda",
  "packages/tensor",
  "packages/comm",
  "packages/attention",
  "packages/checkpointing",
  "packages/llama",
] as const;

export interface PackedPackage {
  name: string;
  folder: string;
  tarball: string;
  /** The package.json inside the tarball (dependency ranges as published). */
  manifest: Manifest;
  /** Paths inside the tarball, without the leading "package/". */
  files: string[];
}

export interface OutsideProject {
  dir: string;
  packages: PackedPackage[];
  /** Example files copied into the project: the repository path and the path in the project. */
  examples: { source: string; copy: string }[];
}

interface Manifest {
  name: string;
  version: string;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  bin?: Record<string, string> | string;
  os?: string | string[];
  cpu?: string | string[];
}

type LockEntry = [string, ...unknown[]];

function run(cmd: string[], cwd: string, env: Record<string, string | undefined> = process.env): string {
  const r = Bun.spawnSync(cmd, { cwd, env, stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${cmd.join(" ")} (in ${cwd}) failed with exit code ${r.exitCode}:\n${r.stdout}${r.stderr}`);
  return r.stdout.toString();
}

function pack(folder: string, dest: string): { tarball: string; manifest: Manifest; files: string[] } {
  const tarball = run([process.execPath, "pm", "pack", "--destination", dest, "--quiet", "--ignore-scripts"], folder)
    .trim()
    .split("\n")
    .pop() as string;
  const path = resolve(dest, basename(tarball));
  const manifest = JSON.parse(run(["tar", "-xzOf", path, "package/package.json"], dest)) as Manifest;
  const files = run(["tar", "-tzf", path], dest)
    .split("\n")
    .filter((f) => f && !f.endsWith("/"))
    .map((f) => f.replace(/^package\//, ""));
  return { tarball: path, manifest, files };
}

function integrity(file: string): string {
  return `sha512-${new Bun.CryptoHasher("sha512").update(readFileSync(file)).digest("base64")}`;
}

function matches(want: string | string[] | undefined, have: string): boolean {
  if (want === undefined) return true;
  const list = Array.isArray(want) ? want : [want];
  const negated = list.filter((w) => w.startsWith("!")).map((w) => w.slice(1));
  if (negated.includes(have)) return false;
  const positive = list.filter((w) => !w.startsWith("!"));
  return positive.length === 0 || positive.includes(have);
}

/** The lockfile entry's metadata object (registry entries: [id, registry, meta, integrity]). */
function metaOf(entry: LockEntry): Manifest {
  return (entry.find((x, i) => i > 0 && typeof x === "object" && x !== null) ?? {}) as Manifest;
}

function lockEntry(id: string, manifest: Manifest, file: string): LockEntry {
  const meta: Record<string, unknown> = {};
  for (const key of ["dependencies", "optionalDependencies", "bin", "os", "cpu"] as const) {
    if (manifest[key] !== undefined) meta[key] = manifest[key];
  }
  return [`${id}@${file}`, meta, integrity(file)];
}

/**
 * Third-party packages the packed ones need, by walking the repository's bun.lock from their
 * dependencies: each is packed from node_modules (checked to be the locked version), except optional
 * packages for other platforms, which keep their registry entry (bun skips them without fetching).
 */
function thirdParty(roots: string[], dest: string): { entries: Record<string, LockEntry>; overrides: Record<string, string> } {
  const lock = Bun.JSONC.parse(readFileSync(join(ROOT, "bun.lock"), "utf8")) as { packages: Record<string, LockEntry> };
  const entries: Record<string, LockEntry> = {};
  const overrides: Record<string, string> = {};
  const queue = [...roots];
  while (queue.length > 0) {
    const name = queue.shift() as string;
    if (entries[name]) continue;
    const entry = lock.packages[name];
    if (!entry) throw new Error(`bun.lock has no entry for ${name}: run \`bun install\` in ${ROOT}`);
    const meta = metaOf(entry);
    const version = entry[0].slice(entry[0].lastIndexOf("@") + 1);
    const installed = join(ROOT, "node_modules", name);
    if (!matches(meta.os, process.platform) || !matches(meta.cpu, process.arch)) {
      entries[name] = entry;
      continue;
    }
    if (!existsSync(join(installed, "package.json")))
      throw new Error(`${name}@${version} is not in ${join(ROOT, "node_modules")}: run \`bun install\``);
    const have = (JSON.parse(readFileSync(join(installed, "package.json"), "utf8")) as Manifest).version;
    if (have !== version) throw new Error(`${installed} is ${name}@${have}, bun.lock pins ${version}: run \`bun install\``);
    const packed = pack(installed, dest);
    entries[name] = lockEntry(name, packed.manifest, packed.tarball);
    overrides[name] = `file:${packed.tarball}`;
    for (const dep of [...Object.keys(meta.dependencies ?? {}), ...Object.keys(meta.optionalDependencies ?? {})]) {
      if (lock.packages[`${name}/${dep}`])
        throw new Error(`${name} needs its own copy of ${dep} (nested in bun.lock), which this script does not handle`);
      queue.push(dep);
    }
  }
  return { entries, overrides };
}

/** Packs everything and installs it offline into `dir` (created; must be outside the repository). */
export function createOutsideProject(dir = mkdtempSync(join(tmpdir(), "lightseq-outside-"))): OutsideProject {
  const abs = resolve(dir);
  if (abs === ROOT || abs.startsWith(`${ROOT}/`)) throw new Error(`${abs} is inside the repository; the project must be outside it`);
  const tarballs = join(abs, "tarballs");
  mkdirSync(tarballs, { recursive: true });

  const packages: PackedPackage[] = PACKAGE_DIRS.map((folder) => {
    const p = pack(join(ROOT, folder), tarballs);
    return { name: p.manifest.name, folder, ...p };
  });
  const ours = new Set(packages.map((p) => p.name));
  const external = packages.flatMap((p) => Object.keys(p.manifest.dependencies ?? {}).filter((d) => !ours.has(d)));
  const { entries, overrides } = thirdParty(external, tarballs);

  const dependencies: Record<string, string> = {};
  const lockPackages: Record<string, LockEntry> = { ...entries };
  for (const p of packages) {
    dependencies[p.name] = `file:${p.tarball}`;
    overrides[p.name] = `file:${p.tarball}`;
    lockPackages[p.name] = lockEntry(p.name, p.manifest, p.tarball);
  }
  const manifest = { name: "lightseq-outside", private: true, type: "module", dependencies, overrides };
  writeFileSync(join(abs, "package.json"), `${JSON.stringify(manifest, null, 2)}\n`);
  const lock = {
    lockfileVersion: 2,
    configVersion: 1,
    workspaces: { "": { name: manifest.name, dependencies } },
    overrides,
    packages: lockPackages,
  };
  writeFileSync(join(abs, "bun.lock"), `${JSON.stringify(lock, null, 2)}\n`);
  // Offline, from the lockfile just written, with an empty cache of the project's own.
  run([process.execPath, "install", "--offline", "--frozen-lockfile"], abs, {
    ...process.env,
    BUN_INSTALL_CACHE_DIR: join(abs, ".bun-cache"),
  });

  const examples: OutsideProject["examples"] = [];
  for (const p of packages) {
    const from = join(ROOT, p.folder, "examples");
    if (!existsSync(from)) continue;
    const short = basename(p.folder);
    for (const f of readdirSync(from).filter((f) => f.endsWith(".ts"))) {
      const copy = join(abs, "examples", short, f);
      cpSync(join(from, f), copy);
      examples.push({ source: join(p.folder, "examples", f), copy });
    }
  }
  return { dir: abs, packages, examples };
}

if (import.meta.main) {
  const given = process.argv[2];
  const created = given === undefined || !existsSync(given);
  const dir = given ?? mkdtempSync(join(tmpdir(), "lightseq-outside-"));
  try {
    console.log(createOutsideProject(dir).dir);
  } catch (e) {
    console.error(`outside-project: ${(e as Error).message}`);
    if (created) rmSync(dir, { recursive: true, force: true });
    process.exit(1);
  }
}
