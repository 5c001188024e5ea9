// Finds NVIDIA's shared libraries at run time, in this order (the cuda-pathfinder order, with an
// override first): an environment variable naming the file (which must exist: a LibraryOverrideError
// otherwise, never a search for another copy), pip wheel folders (nvidia/*/lib under
// every site-packages we can find), $CUDA_HOME / $CUDA_PATH / /usr/local/cuda, `ldconfig -p`, and
// last the bare soname for the system loader. bun's dlopen is RTLD_LOCAL, so dependencies are
// preloaded by absolute path by the caller, in order.

import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { LibraryOverrideError } from "./errors.ts";

export interface LibrarySpec {
  /** Human name, e.g. "CUDA runtime (libcudart)". */
  readonly name: string;
  readonly sonames: readonly string[];
  /** Variable that names the file directly. */
  readonly envVar: string;
  /** Sub-folders of site-packages, e.g. "nvidia/cu13/lib". */
  readonly wheelDirs: readonly string[];
  /** Sub-folders of a CUDA toolkit root, e.g. "lib64". */
  readonly toolkitDirs: readonly string[];
}

export interface Located {
  readonly path: string;
  readonly tried: readonly string[];
}

let sitePackagesCache: string[] | undefined;

function globDirs(pattern: string[]): string[] {
  // Tiny glob: each segment is a literal or a prefix followed by "*".
  let dirs = [pattern[0] as string];
  for (const seg of pattern.slice(1)) {
    const next: string[] = [];
    for (const d of dirs) {
      if (!seg.includes("*")) {
        const p = join(d, seg);
        if (existsSync(p)) next.push(p);
        continue;
      }
      const prefix = seg.slice(0, seg.indexOf("*"));
      let names: string[] = [];
      try {
        names = readdirSync(d);
      } catch {
        continue;
      }
      for (const n of names.sort()) if (n.startsWith(prefix)) next.push(join(d, n));
    }
    dirs = next;
  }
  return dirs;
}

/** site-packages folders of the Python environments on this machine. */
export function sitePackages(): string[] {
  if (sitePackagesCache) return sitePackagesCache;
  const found = new Set<string>();
  const add = (p: string) => {
    if (existsSync(p)) found.add(p);
  };
  for (const root of [process.env.VIRTUAL_ENV, process.env.CONDA_PREFIX].filter(Boolean) as string[]) {
    for (const d of globDirs([root, "lib", "python3*", "site-packages"])) add(d);
  }
  for (const d of globDirs(["/opt", "*", ".venv", "lib", "python3*", "site-packages"])) add(d);
  for (const d of globDirs(["/usr/local/lib", "python3*", "dist-packages"])) add(d);
  for (const d of globDirs(["/usr/local/lib", "python3*", "site-packages"])) add(d);
  const home = process.env.HOME;
  if (home) {
    for (const d of globDirs([home, ".local", "lib", "python3*", "site-packages"])) add(d);
    for (const d of globDirs([home, ".pyenv", "versions", "*", "lib", "python3*", "site-packages"])) add(d);
  }
  add("/usr/lib/python3/dist-packages");
  sitePackagesCache = [...found];
  return sitePackagesCache;
}

let ldconfigCache: Map<string, string> | undefined;

function ldconfig(): Map<string, string> {
  if (ldconfigCache) return ldconfigCache;
  ldconfigCache = new Map();
  for (const exe of ["/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"]) {
    try {
      // Every process we start keeps NVLink multicast off (shared GPU machines), ldconfig included.
      const env = { ...process.env, NCCL_NVLS_ENABLE: "0", TORCH_SYMM_MEM_DISABLE_MULTICAST: "1", NVSHMEM_DISABLE_NVLS: "1" };
      const r = Bun.spawnSync([exe, "-p"], { stdout: "pipe", stderr: "ignore", env });
      if (r.exitCode !== 0) continue;
      for (const line of r.stdout.toString().split("\n")) {
        const m = /^\s*(\S+) \(([^)]*)\) => (\S+)/.exec(line);
        if (m && m[2]?.includes("x86-64") !== false && !ldconfigCache.has(m[1] as string)) {
          ldconfigCache.set(m[1] as string, m[3] as string);
        }
      }
      break;
    } catch {}
  }
  return ldconfigCache;
}

/** Where `spec`'s library is; throws LibraryOverrideError when its variable names a missing file. */
export function locateLibrary(spec: LibrarySpec): Located | { path: null; tried: string[] } {
  const tried: string[] = [];
  const override = process.env[spec.envVar];
  if (override) {
    if (!existsSync(override)) throw new LibraryOverrideError(spec.envVar, override, spec.name);
    return { path: override, tried: [`$${spec.envVar}=${override}`] };
  } else {
    tried.push(`$${spec.envVar} (unset)`);
  }
  const check = (dir: string): string | null => {
    for (const so of spec.sonames) {
      const p = join(dir, so);
      if (existsSync(p)) return p;
    }
    tried.push(join(dir, `{${spec.sonames.join(",")}}`));
    return null;
  };
  for (const sp of sitePackages()) {
    for (const w of spec.wheelDirs) {
      const hit = check(join(sp, w));
      if (hit) return { path: hit, tried };
    }
  }
  if (sitePackages().length === 0) tried.push("(no Python site-packages found for pip wheels)");
  const roots = [process.env.CUDA_HOME, process.env.CUDA_PATH, "/usr/local/cuda"].filter(Boolean) as string[];
  for (const r of new Set(roots)) {
    for (const d of spec.toolkitDirs) {
      const hit = check(join(r, d));
      if (hit) return { path: hit, tried };
    }
  }
  const ld = ldconfig();
  for (const so of spec.sonames) {
    const hit = ld.get(so);
    if (hit) return { path: hit, tried };
  }
  tried.push(`ldconfig -p (no ${spec.sonames.join(", ")})`);
  return { path: null, tried };
}

export const CUDART: LibrarySpec = {
  name: "CUDA runtime (libcudart)",
  sonames: ["libcudart.so.13", "libcudart.so.12"],
  envVar: "LIGHTSEQ_CUDART_SO",
  wheelDirs: ["nvidia/cu13/lib", "nvidia/cuda_runtime/lib"],
  toolkitDirs: ["lib64", "targets/x86_64-linux/lib", "lib"],
};

export const CUBLASLT: LibrarySpec = {
  name: "cuBLASLt (libcublasLt)",
  sonames: ["libcublasLt.so.13", "libcublasLt.so.12"],
  envVar: "LIGHTSEQ_CUBLASLT_SO",
  wheelDirs: ["nvidia/cu13/lib", "nvidia/cublas/lib"],
  toolkitDirs: ["lib64", "targets/x86_64-linux/lib", "lib"],
};

export const NCCL: LibrarySpec = {
  name: "NCCL (libnccl)",
  sonames: ["libnccl.so.2"],
  envVar: "LIGHTSEQ_NCCL_SO",
  wheelDirs: ["nvidia/nccl/lib", "nvidia/cu13/lib"],
  toolkitDirs: ["lib64", "targets/x86_64-linux/lib", "lib"],
};

export const CUDNN: LibrarySpec = {
  name: "cuDNN (libcudnn)",
  sonames: ["libcudnn.so.9"],
  envVar: "LIGHTSEQ_CUDNN_SO",
  wheelDirs: ["nvidia/cudnn/lib", "nvidia/cu13/lib"],
  toolkitDirs: ["lib64", "targets/x86_64-linux/lib", "lib"],
};

/**
 * OpenBLAS for the CPU matmul (not a CUDA library, so its own search): $LIGHTSEQ_BLAS_SO (a path that
 * does not exist comes back as `badOverride` for the caller to refuse; it is never skipped), the
 * system's libopenblas.so.0 (`ldconfig -p`, then Debian's libopenblas0-pthread/-openmp/-serial
 * folders), then the OpenBLAS that numpy and scipy wheels bundle (`numpy.libs/libscipy_openblas*.so`, `scipy.libs/...`), whose symbols carry a prefix
 * and, in the 64-bit-integer build, a suffix: the loader tells the builds apart by their symbols.
 */
export function locateBlas(): { path: string | null; tried: string[]; badOverride?: string } {
  const override = process.env.LIGHTSEQ_BLAS_SO;
  if (override) {
    const tried = [`$LIGHTSEQ_BLAS_SO=${override}`];
    return existsSync(override) ? { path: override, tried } : { path: null, tried, badOverride: override };
  }
  const tried = ["$LIGHTSEQ_BLAS_SO (unset)"];
  const hit = ldconfig().get("libopenblas.so.0");
  if (hit) return { path: hit, tried };
  tried.push("ldconfig -p (no libopenblas.so.0)");
  for (const variant of ["openblas-pthread", "openblas-openmp", "openblas-serial"]) {
    const p = join("/usr/lib/x86_64-linux-gnu", variant, "libopenblas.so.0");
    if (existsSync(p)) return { path: p, tried };
    tried.push(p);
  }
  for (const sp of sitePackages()) {
    for (const bundle of ["numpy.libs", "scipy.libs"]) {
      const found = globDirs([sp, bundle, "libscipy_openblas*"]).filter((p) => p.endsWith(".so"));
      if (found[0]) return { path: found[0], tried };
      tried.push(join(sp, bundle, "libscipy_openblas*.so"));
    }
  }
  return { path: null, tried };
}
