// Lab script for liblightseq.so: validates every ABI function bit for bit against a CPU reference
// (rng.ts for the random numbers), then times them. Needs a GPU; self-contained (only bun:ffi and
// libcudart), so it runs while @lightseq/cuda changes.
//
//   bun kernels/build.ts && bun kernels/dev/validate.ts [--no-bench] [--no-large]
//
// Env: LIGHTSEQ_CUDART_SO (path of libcudart.so.13), LIGHTSEQ_KERNELS_SO (default kernels/build/liblightseq.so).

import { dlopen } from "bun:ffi";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { fillNormalBf16, fillNormalF32, fillUniformBf16, fillUniformF32, threefry2x32 } from "../../packages/tensor/src/rng.ts";

const bench = !process.argv.includes("--no-bench");
const large = !process.argv.includes("--no-large");

// ---------------------------------------------------------------------------------------------------
// Libraries

function findCudart(): string {
  const env = process.env.LIGHTSEQ_CUDART_SO;
  if (env) return env;
  const dirs = ["/usr/local/cuda/lib64", "/usr/local/cuda/lib", "/usr/local/cuda/targets/x86_64-linux/lib"];
  for (const base of ["/opt", "/usr/local/lib"]) {
    if (!existsSync(base)) continue;
    for (const d of readdirSync(base)) dirs.push(join(base, d, ".venv/lib/python3.12/site-packages/nvidia/cu13/lib"));
  }
  for (const d of dirs) if (existsSync(join(d, "libcudart.so.13"))) return join(d, "libcudart.so.13");
  throw new Error(`libcudart.so.13 not found in ${dirs.join(", ")}; set LIGHTSEQ_CUDART_SO`);
}

// Device addresses are plain numbers here; bun:ffi accepts them for "ptr" arguments.
type Fn = (...args: Array<number | bigint | NodeJS.TypedArray | null>) => number;
function open<T extends Record<string, { args: readonly string[]; returns: string }>>(path: string, table: T): Record<keyof T, Fn> {
  return dlopen(path, table as never).symbols as unknown as Record<keyof T, Fn>;
}

const rt = open(findCudart(), {
  cudaMalloc: { args: ["ptr", "u64"], returns: "i32" },
  cudaFree: { args: ["ptr"], returns: "i32" },
  cudaMemcpy: { args: ["ptr", "ptr", "u64", "i32"], returns: "i32" },
  cudaMemset: { args: ["ptr", "i32", "u64"], returns: "i32" },
  cudaDeviceSynchronize: { args: [], returns: "i32" },
  cudaEventCreate: { args: ["ptr"], returns: "i32" },
  cudaEventRecord: { args: ["ptr", "ptr"], returns: "i32" },
  cudaEventSynchronize: { args: ["ptr"], returns: "i32" },
  cudaEventElapsedTime: { args: ["ptr", "ptr", "ptr"], returns: "i32" },
  cudaGetErrorString: { args: ["i32"], returns: "cstring" },
});

const soPath = process.env.LIGHTSEQ_KERNELS_SO ?? join(import.meta.dir, "../build/liblightseq.so");
const p5 = ["ptr", "ptr", "ptr", "i64", "ptr"] as const;
const rand = ["ptr", "i64", "u64", "u64", "f32", "f32", "ptr"] as const;
const k = open(soPath, {
  ls_abi_version: { args: [], returns: "i32" },
  ls_noop: { args: ["ptr"], returns: "i32" },
  ls_fill_u32: { args: ["ptr", "u32", "i64", "ptr"], returns: "i32" },
  ls_fill_u16: { args: ["ptr", "u16", "i64", "ptr"], returns: "i32" },
  ls_rand_uniform_f32: { args: rand, returns: "i32" },
  ls_rand_uniform_bf16: { args: rand, returns: "i32" },
  ls_rand_normal_f32: { args: rand, returns: "i32" },
  ls_rand_normal_bf16: { args: rand, returns: "i32" },
  ls_cast_f32_bf16: { args: ["ptr", "ptr", "i64", "ptr"], returns: "i32" },
  ls_cast_bf16_f32: { args: ["ptr", "ptr", "i64", "ptr"], returns: "i32" },
  ls_add_f32: { args: p5, returns: "i32" },
  ls_add_bf16: { args: p5, returns: "i32" },
  ls_add_i32: { args: p5, returns: "i32" },
  ls_mul_f32: { args: p5, returns: "i32" },
  ls_mul_bf16: { args: p5, returns: "i32" },
  ls_mul_i32: { args: p5, returns: "i32" },
  ls_scale_f32: { args: ["ptr", "ptr", "f32", "i64", "ptr"], returns: "i32" },
  ls_scale_bf16: { args: ["ptr", "ptr", "f32", "i64", "ptr"], returns: "i32" },
  ls_axpy_f32: { args: ["f32", "ptr", "ptr", "i64", "ptr"], returns: "i32" },
  ls_axpy_bf16: { args: ["f32", "ptr", "ptr", "i64", "ptr"], returns: "i32" },
  ls_sumsq_f32: { args: ["ptr", "i64", "ptr", "ptr", "ptr"], returns: "i32" },
  ls_sumsq_bf16: { args: ["ptr", "i64", "ptr", "ptr", "ptr"], returns: "i32" },
  ls_sumsq_partials: { args: [], returns: "i64" },
});

function check(code: number, what: string): void {
  if (code !== 0) throw new Error(`${what}: CUDA error ${code} (${rt.cudaGetErrorString(code)})`);
}

// ---------------------------------------------------------------------------------------------------
// Device buffers and copies

type Host = Float32Array | Uint16Array | Int32Array | Uint32Array;

function malloc(bytes: number): number {
  const box = new BigUint64Array(new ArrayBuffer(8));
  check(rt.cudaMalloc(box, bytes), `cudaMalloc(${bytes})`);
  return Number(box[0]);
}
const free = (p: number) => check(rt.cudaFree(p), "cudaFree");
const upload = (dst: number, src: Host) => check(rt.cudaMemcpy(dst, src, src.byteLength, 1), "cudaMemcpy H2D");
const download = (dst: Host, src: number) => check(rt.cudaMemcpy(dst, src, dst.byteLength, 2), "cudaMemcpy D2H");
const poison = (p: number, bytes: number) => check(rt.cudaMemset(p, 0xff, bytes), "cudaMemset"); // NaN / -1 everywhere
const sync = () => check(rt.cudaDeviceSynchronize(), "cudaDeviceSynchronize");

// ---------------------------------------------------------------------------------------------------
// CPU references

const f32 = Math.fround;
const castBuf = new ArrayBuffer(4);
const castF = new Float32Array(castBuf);
const castU = new Uint32Array(castBuf);
function bf16ToF32(h: number): number {
  castU[0] = h << 16;
  return castF[0]!;
}
function f32ToBf16(x: number): number {
  castF[0] = x;
  const b = castU[0]!;
  if ((b & 0x7fffffff) > 0x7f800000) return 0x7fc0 | ((b >>> 16) & 0x8000);
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}
const isNanF32Bits = (b: number) => (b & 0x7fffffff) > 0x7f800000;
const isNanBf16Bits = (b: number) => (b & 0x7fff) > 0x7f80;

let failures = 0;

// Compares raw bits; NaN equals NaN (payloads differ between CPU and GPU by design).
function compare(what: string, got: Host, want: Host, kind: "f32" | "bf16" | "i32"): void {
  const g = kind === "bf16" ? (got as Uint16Array) : new Uint32Array(got.buffer, got.byteOffset, got.length);
  const w = kind === "bf16" ? (want as Uint16Array) : new Uint32Array(want.buffer, want.byteOffset, want.length);
  const nan = kind === "f32" ? isNanF32Bits : kind === "bf16" ? isNanBf16Bits : () => false;
  let bad = 0;
  const shown: string[] = [];
  for (let i = 0; i < g.length; i++) {
    const a = g[i]!;
    const b = w[i]!;
    if (a === b || (nan(a) && nan(b))) continue;
    if (bad++ < 5) shown.push(`[${i}] got 0x${a.toString(16)} want 0x${b.toString(16)}`);
  }
  if (bad === 0) {
    console.log(`  ok    ${what}`);
  } else {
    failures++;
    console.log(`  FAIL  ${what}: ${bad} of ${g.length} differ; ${shown.join(", ")}`);
  }
}

// Inputs: uniform values with special values sprinkled in (zeros, infinities, NaN, subnormals, huge).
const specials = [0, -0, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, Number.NaN, 1e-40, -3e-39, 3.4e38, -3.4e38, 1, -1, 65504];
function inputF32(n: number, seed: bigint): Float32Array {
  const x = new Float32Array(n);
  fillUniformF32(x, seed, 0, -4, 4);
  for (let i = 0; i < Math.min(n, 997); i += 83) x[i] = specials[(i / 83) % specials.length]!;
  return x;
}
function inputBf16(n: number, seed: bigint): Uint16Array {
  const x = new Uint16Array(n);
  const f = inputF32(n, seed);
  for (let i = 0; i < n; i++) x[i] = f32ToBf16(f[i]!);
  return x;
}
function inputI32(n: number, seed: bigint): Int32Array {
  const x = new Int32Array(n);
  for (let i = 0; i < n; i++) x[i] = threefry2x32(i, 0, Number(seed), 7)[0] | 0;
  return x;
}

// ---------------------------------------------------------------------------------------------------
// Validation

type Kind = "f32" | "bf16" | "i32";
const bytesOf = (kind: Kind) => (kind === "bf16" ? 2 : 4);

function newHost(kind: Kind, n: number): Host {
  return kind === "f32" ? new Float32Array(n) : kind === "bf16" ? new Uint16Array(n) : new Int32Array(n);
}

function binaryCase(name: string, kind: Kind, ref: (a: number, b: number) => number, n: number, shift: number, seed: bigint): void {
  const fn = k[name as keyof typeof k];
  const a = kind === "f32" ? inputF32(n, seed) : kind === "bf16" ? inputBf16(n, seed) : inputI32(n, seed);
  const b = kind === "f32" ? inputF32(n, seed + 1n) : kind === "bf16" ? inputBf16(n, seed + 1n) : inputI32(n, seed + 1n);
  const want = newHost(kind, n);
  for (let i = 0; i < n; i++) want[i] = ref(a[i]!, b[i]!);
  const s = bytesOf(kind);
  const bytes = (n + 1) * s;
  const da = malloc(bytes);
  const db = malloc(bytes);
  const dout = malloc(bytes);
  upload(da + shift * s, a);
  upload(db, b); // b stays aligned: mixed alignment must take the scalar path too
  poison(dout, bytes);
  check(fn(da + shift * s, db, dout + shift * s, n, null), name);
  const got = newHost(kind, n);
  download(got, dout + shift * s);
  compare(`${name} n=${n}${shift ? " (unaligned)" : ""}`, got, want, kind);
  // in place: out = a
  check(fn(da + shift * s, db, da + shift * s, n, null), `${name} in place`);
  download(got, da + shift * s);
  compare(`${name} n=${n} in place`, got, want, kind);
  free(da);
  free(db);
  free(dout);
}

function unaryCase(
  what: string,
  run: (x: number, y: number, n: number) => number,
  kin: Kind,
  kout: Kind,
  ref: (x: number) => number,
  n: number,
  shift: number,
): void {
  const x = kin === "f32" ? inputF32(n, 31n) : kin === "bf16" ? inputBf16(n, 31n) : inputI32(n, 31n);
  const want = newHost(kout, n);
  for (let i = 0; i < n; i++) want[i] = ref(x[i]!);
  const dx = malloc((n + 1) * bytesOf(kin));
  const dy = malloc((n + 1) * bytesOf(kout));
  upload(dx + shift * bytesOf(kin), x);
  poison(dy, (n + 1) * bytesOf(kout));
  check(run(dx + shift * bytesOf(kin), dy + shift * bytesOf(kout), n), what);
  const got = newHost(kout, n);
  download(got, dy + shift * bytesOf(kout));
  compare(`${what} n=${n}${shift ? " (unaligned)" : ""}`, got, want, kout);
  free(dx);
  free(dy);
}

function axpyCase(kind: "f32" | "bf16", n: number, shift: number): void {
  const alpha = f32(-0.37);
  const x = kind === "f32" ? inputF32(n, 41n) : inputBf16(n, 41n);
  const y = kind === "f32" ? inputF32(n, 42n) : inputBf16(n, 42n);
  const want = newHost(kind, n);
  for (let i = 0; i < n; i++) {
    want[i] = kind === "f32" ? f32(y[i]! + f32(alpha * x[i]!)) : f32ToBf16(f32(bf16ToF32(y[i]!) + f32(alpha * bf16ToF32(x[i]!))));
  }
  const s = bytesOf(kind);
  const dx = malloc((n + 1) * s);
  const dy = malloc((n + 1) * s);
  upload(dx + shift * s, x);
  upload(dy + shift * s, y);
  const fn = kind === "f32" ? k.ls_axpy_f32 : k.ls_axpy_bf16;
  check(fn(alpha, dx + shift * s, dy + shift * s, n, null), `axpy_${kind}`);
  const got = newHost(kind, n);
  download(got, dy + shift * s);
  compare(`ls_axpy_${kind} n=${n}${shift ? " (unaligned)" : ""}`, got, want, kind);
  free(dx);
  free(dy);
}

function randCase(
  name: "uniform" | "normal",
  kind: "f32" | "bf16",
  n: number,
  seed: bigint,
  offset: number,
  p: number,
  q: number,
  shift: number,
): void {
  const want = newHost(kind, n);
  if (name === "uniform" && kind === "f32") fillUniformF32(want as Float32Array, seed, offset, p, q);
  if (name === "uniform" && kind === "bf16") fillUniformBf16(want as Uint16Array, seed, offset, p, q);
  if (name === "normal" && kind === "f32") fillNormalF32(want as Float32Array, seed, offset, p, q);
  if (name === "normal" && kind === "bf16") fillNormalBf16(want as Uint16Array, seed, offset, p, q);
  const fn = {
    uniform_f32: k.ls_rand_uniform_f32,
    uniform_bf16: k.ls_rand_uniform_bf16,
    normal_f32: k.ls_rand_normal_f32,
    normal_bf16: k.ls_rand_normal_bf16,
  }[`${name}_${kind}`];
  const s = bytesOf(kind);
  const d = malloc((n + 1) * s);
  poison(d, (n + 1) * s);
  check(fn(d + shift * s, n, seed, BigInt(offset), p, q, null), `rand_${name}_${kind}`);
  const got = newHost(kind, n);
  download(got, d + shift * s);
  compare(`ls_rand_${name}_${kind} n=${n} seed=0x${seed.toString(16)} offset=${offset}${shift ? " (unaligned)" : ""}`, got, want, kind);
  free(d);
}

function sumsqCase(kind: "f32" | "bf16", n: number, shift: number): void {
  const x = kind === "f32" ? new Float32Array(n) : new Uint16Array(n);
  if (kind === "f32") fillNormalF32(x as Float32Array, 77n, 0, 0, 3);
  else fillNormalBf16(x as Uint16Array, 77n, 0, 0, 3);
  let ref = 0;
  for (let i = 0; i < n; i++) {
    const v = kind === "f32" ? x[i]! : bf16ToF32(x[i]!);
    ref += v * v;
  }
  const want = new Float32Array([ref]);
  const s = bytesOf(kind);
  const dx = malloc((n + 1) * s);
  const partials = malloc(Number(k.ls_sumsq_partials()) * 8);
  const dout = malloc(4);
  upload(dx + shift * s, x);
  const fn = kind === "f32" ? k.ls_sumsq_f32 : k.ls_sumsq_bf16;
  const got = new Float32Array(1);
  const again = new Float32Array(1);
  check(fn(dx + shift * s, n, partials, dout, null), `sumsq_${kind}`);
  download(got, dout);
  check(fn(dx + shift * s, n, partials, dout, null), `sumsq_${kind}`);
  download(again, dout);
  compare(`ls_sumsq_${kind} n=${n}${shift ? " (unaligned)" : ""} vs CPU f64 sum (${ref})`, got, want, "f32");
  compare(`ls_sumsq_${kind} n=${n} run twice`, again, got, "f32");
  free(dx);
  free(partials);
  free(dout);
}

function validate(): void {
  console.log("validate");
  if (k.ls_abi_version() !== 4) throw new Error(`ABI version ${k.ls_abi_version()}, expected 4`);
  console.log(`  ok    ls_abi_version = 4, ls_sumsq_partials = ${k.ls_sumsq_partials()}`);
  check(k.ls_noop(null), "ls_noop");
  sync();

  // n == 0: returns 0 without touching the (null) pointers; sumsq writes +0.
  for (const [name, code] of [
    ["fill_u32", k.ls_fill_u32(null, 1, 0, null)],
    ["add_f32", k.ls_add_f32(null, null, null, 0, null)],
    ["rand_normal_bf16", k.ls_rand_normal_bf16(null, 0, 1n, 0n, 0, 1, null)],
    ["axpy_bf16", k.ls_axpy_bf16(1, null, null, 0, null)],
  ] as const) {
    check(code, `${name} n=0`);
  }
  const d4 = malloc(4);
  poison(d4, 4);
  check(k.ls_sumsq_f32(null, 0, null, d4, null), "sumsq n=0");
  const z = new Float32Array(1);
  download(z, d4);
  compare("n = 0 launches nothing; ls_sumsq_f32(n = 0) = +0", z, new Float32Array([0]), "f32");
  free(d4);

  const sizes = [1, 7, 4099, 1_000_003];
  for (const n of sizes) {
    for (const shift of n > 7 ? [0, 1] : [0]) {
      binaryCase("ls_add_f32", "f32", (a, b) => f32(a + b), n, shift, 1n);
      binaryCase("ls_mul_f32", "f32", (a, b) => f32(a * b), n, shift, 3n);
      binaryCase("ls_add_bf16", "bf16", (a, b) => f32ToBf16(f32(bf16ToF32(a) + bf16ToF32(b))), n, shift, 5n);
      binaryCase("ls_mul_bf16", "bf16", (a, b) => f32ToBf16(f32(bf16ToF32(a) * bf16ToF32(b))), n, shift, 7n);
      binaryCase("ls_add_i32", "i32", (a, b) => (a + b) | 0, n, shift, 9n);
      binaryCase("ls_mul_i32", "i32", (a, b) => Math.imul(a, b), n, shift, 11n);
      const alpha = f32(1.7);
      unaryCase(
        "ls_scale_f32",
        (x, y, m) => k.ls_scale_f32(x, y, alpha, m, null),
        "f32",
        "f32",
        (x) => f32(alpha * x),
        n,
        shift,
      );
      unaryCase(
        "ls_scale_bf16",
        (x, y, m) => k.ls_scale_bf16(x, y, alpha, m, null),
        "bf16",
        "bf16",
        (x) => f32ToBf16(f32(alpha * bf16ToF32(x))),
        n,
        shift,
      );
      unaryCase("ls_cast_f32_bf16", (x, y, m) => k.ls_cast_f32_bf16(x, y, m, null), "f32", "bf16", f32ToBf16, n, shift);
      unaryCase("ls_cast_bf16_f32", (x, y, m) => k.ls_cast_bf16_f32(x, y, m, null), "bf16", "f32", bf16ToF32, n, shift);
      unaryCase(
        "ls_fill_u32",
        (_x, y, m) => k.ls_fill_u32(y, 0x3f800000, m, null),
        "f32",
        "f32",
        () => 1,
        n,
        shift,
      );
      unaryCase(
        "ls_fill_u16",
        (_x, y, m) => k.ls_fill_u16(y, 0xbf80, m, null),
        "bf16",
        "bf16",
        () => 0xbf80,
        n,
        shift,
      );
      axpyCase("f32", n, shift);
      axpyCase("bf16", n, shift);
      sumsqCase("f32", n, shift);
      sumsqCase("bf16", n, shift);
    }
  }

  // Random streams: bit-identical to rng.ts, across the 2^32 counter carry, with a 64-bit seed.
  const seed = 0x123456789abcdef0n;
  for (const shift of [0, 1]) {
    randCase("uniform", "f32", 1_000_003, seed, 2 ** 32 - 500_000, -0.1, 0.3, shift);
    randCase("uniform", "bf16", 1_000_003, seed, 2 ** 32 - 500_000, -0.1, 0.3, shift);
    randCase("normal", "f32", 1_000_003, seed, 2 ** 32 - 500_000, 0.5, 2, shift);
    randCase("normal", "bf16", 1_000_003, seed, 2 ** 32 - 500_000, 0.5, 2, shift);
  }
  randCase("normal", "f32", 4_000_000, 42n, 0, 0, 1, 0);
  randCase("normal", "f32", 100_000, 7n, 2 ** 52 + 12345, 0, 0.02, 0);

  if (large) {
    // n > 2^32: 64-bit indexing in the grid-stride loops; check the head and the tail against rng.ts.
    const n = 2 ** 32 + 1_000_001;
    const d = malloc(n * 2);
    poison(d, n * 2);
    check(k.ls_rand_normal_bf16(d, n, 5n, 3n, 0, 1, null), "rand_normal_bf16 large");
    const m = 1_000_000;
    for (const start of [0, n - m]) {
      const want = new Uint16Array(m);
      fillNormalBf16(want, 5n, 3 + start, 0, 1);
      const got = new Uint16Array(m);
      download(got, d + start * 2);
      compare(`ls_rand_normal_bf16 n=2^32+1000001, elements [${start}, ${start + m})`, got, want, "bf16");
    }
    free(d);
  }
  console.log(failures === 0 ? "validate: all ok" : `validate: ${failures} FAILED`);
}

// ---------------------------------------------------------------------------------------------------
// Timing (CUDA events, median of 20 after 3 warm-ups)

function timeMs(fn: () => void, reps = 20): number {
  const evs = [new BigUint64Array(new ArrayBuffer(8)), new BigUint64Array(new ArrayBuffer(8))];
  for (const e of evs) check(rt.cudaEventCreate(e), "cudaEventCreate");
  const [e0, e1] = evs.map((e) => Number(e[0])) as [number, number];
  const ms = new Float32Array(new ArrayBuffer(4));
  for (let i = 0; i < 3; i++) fn();
  const times: number[] = [];
  for (let i = 0; i < reps; i++) {
    check(rt.cudaEventRecord(e0, null), "cudaEventRecord");
    fn();
    check(rt.cudaEventRecord(e1, null), "cudaEventRecord");
    check(rt.cudaEventSynchronize(e1), "cudaEventSynchronize");
    check(rt.cudaEventElapsedTime(ms, e0, e1), "cudaEventElapsedTime");
    times.push(ms[0]!);
  }
  times.sort((a, b) => a - b);
  return times[times.length >> 1]!;
}

function benchmark(): void {
  const n = 2 ** 28;
  console.log(`bench (n = 2^28 elements; GB/s counts bytes read + written once)`);
  const a = malloc(n * 4);
  const b = malloc(n * 4);
  const c = malloc(n * 4);
  const partials = malloc(Number(k.ls_sumsq_partials()) * 8);
  check(k.ls_rand_uniform_f32(a, n, 1n, 0n, -1, 1, null), "init");
  check(k.ls_rand_uniform_f32(b, n, 2n, 0n, -1, 1, null), "init");
  const rows: Array<[string, number, () => number]> = [
    ["fill_u32", 4, () => k.ls_fill_u32(c, 0, n, null)],
    ["fill_u16", 2, () => k.ls_fill_u16(c, 0, n, null)],
    ["add_f32", 12, () => k.ls_add_f32(a, b, c, n, null)],
    ["add_bf16", 6, () => k.ls_add_bf16(a, b, c, n, null)],
    ["mul_i32", 12, () => k.ls_mul_i32(a, b, c, n, null)],
    ["scale_f32", 8, () => k.ls_scale_f32(a, c, 0.5, n, null)],
    ["axpy_f32", 12, () => k.ls_axpy_f32(0.5, a, c, n, null)],
    ["axpy_bf16", 6, () => k.ls_axpy_bf16(0.5, a, c, n, null)],
    ["cast_f32_bf16", 6, () => k.ls_cast_f32_bf16(a, c, n, null)],
    ["cast_bf16_f32", 6, () => k.ls_cast_bf16_f32(a, c, n, null)],
    ["sumsq_f32", 4, () => k.ls_sumsq_f32(a, n, partials, c, null)],
    ["sumsq_bf16", 2, () => k.ls_sumsq_bf16(a, n, partials, c, null)],
    ["rand_uniform_f32", 4, () => k.ls_rand_uniform_f32(c, n, 3n, 0n, 0, 1, null)],
    ["rand_normal_f32", 4, () => k.ls_rand_normal_f32(c, n, 3n, 0n, 0, 1, null)],
    ["rand_normal_bf16", 2, () => k.ls_rand_normal_bf16(c, n, 3n, 0n, 0, 1, null)],
  ];
  for (const [name, bytesPerElem, fn] of rows) {
    const ms = timeMs(() => check(fn(), name));
    console.log(
      `  ${name.padEnd(18)} ${ms.toFixed(3).padStart(8)} ms  ${((n * bytesPerElem) / ms / 1e6).toFixed(0).padStart(6)} GB/s  ${(n / ms / 1e6).toFixed(1).padStart(7)} Gelem/s`,
    );
  }
  const launches = 10_000;
  const ms = timeMs(() => {
    for (let i = 0; i < launches; i++) k.ls_noop(null);
  }, 5);
  console.log(`  ls_noop: ${((ms * 1000) / launches).toFixed(2)} us per launch (${launches} back to back, events around the batch)`);
  for (const p of [a, b, c, partials]) free(p);
}

validate();
if (bench) benchmark();
sync();
process.exit(failures === 0 ? 0 : 1);
