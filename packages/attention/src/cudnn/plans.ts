// Execution plans of the SDPA graphs, built once per shape (device, pass, Tq, Tk, Hq, Hkv, D, causal,
// deterministic) and cached with their workspace size. The scale is NOT in the key: it is a by-value
// scalar read at execution, so one plan serves every scale (a plan build can take seconds when cuDNN
// compiles its kernel at run time). Workspace and scratch are allocated by the caller (backend.ts) per call.
// A deterministic backward plan is the deterministic graph (sdpa.ts) on the first engine configuration
// that finalizes and whose engine does not carry CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC (a guard of
// ours: cudnn-frontend does not filter SDPA by notes); none is a one-line refusal naming cuDNN's version.

import { ptr } from "bun:ffi";
import { DeviceAttr, deviceAttribute, type Stream, setDevice } from "@lightseq/cuda";
import { AttentionError } from "../layout.ts";
import { CUDNN_ABI as C } from "./abi.ts";
import {
  type Desc,
  Descriptors,
  finalize,
  GraphBuilder,
  outCount,
  outDesc,
  outI64,
  setDescs,
  setEnum,
  setHandle,
  setInt64,
  setPointers,
} from "./graph.ts";
import { CudnnError, check, fmtVersion, lastError, lib, statusName } from "./library.ts";
import { buildBackward, buildForward, type PlanShape, SCALAR, UID } from "./sdpa.ts";

type Pass = "forward" | "backward";

interface Plan {
  key: string;
  pass: Pass;
  shape: PlanShape;
  device: number;
  exec: Desc;
  workspaceBytes: number;
  /** cuDNN's global index of the engine the heuristics chose (-1 if it could not be read). */
  engine: number;
  /** Whether that engine carries CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC (null: its notes could not be read). */
  nondeterministicNote: boolean | null;
  buildMs: number;
  uids: number[];
  /** Host memory of the by-value scalars: an explicit ArrayBuffer, so its address is stable. */
  scalars: ArrayBuffer;
  descs: Descriptors;
}

/** What the plan cache holds (for logs and benchmarks). */
export interface CudnnPlanInfo {
  key: string;
  pass: Pass;
  engine: number;
  nondeterministicNote: boolean | null;
  workspaceBytes: number;
  buildMs: number;
}

const plans = new Map<string, Plan>();
const handles = new Map<number, number>();

export function handleFor(device: number): number {
  const h = handles.get(device);
  if (h !== undefined) return h;
  setDevice(device);
  const major = deviceAttribute(DeviceAttr.computeCapabilityMajor, device);
  const minor = deviceAttribute(DeviceAttr.computeCapabilityMinor, device);
  if (major < 8) throw new Error(`cuda:${device} has compute capability ${major}.${minor}; cuDNN's fused attention needs 8.0 or newer`);
  check(lib().fns.cudnnCreate(outDesc), "cudnnCreate", `cuda:${device}`);
  const handle = Number(outDesc[0]);
  handles.set(device, handle);
  return handle;
}

function getAttrInt64(d: Desc, attr: number, what: string): number {
  check(lib().fns.cudnnBackendGetAttribute(d, attr, C.CUDNN_TYPE_INT64, 1, outCount, outI64), "cudnnBackendGetAttribute", what);
  return Number(outI64[0]);
}

/** The engine of an engine configuration (a descriptor of `descs`). */
function engineOf(descs: Descriptors, cfg: Desc): Desc {
  const engine = descs.create(C.CUDNN_BACKEND_ENGINE_DESCRIPTOR, "engine query");
  const arr = BigUint64Array.of(BigInt(engine));
  check(
    lib().fns.cudnnBackendGetAttribute(cfg, C.CUDNN_ATTR_ENGINECFG_ENGINE, C.CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, outCount, arr),
    "cudnnBackendGetAttribute(ENGINECFG_ENGINE)",
  );
  return engine;
}

function engineIndex(descs: Descriptors, cfg: Desc): number {
  try {
    return getAttrInt64(engineOf(descs, cfg), C.CUDNN_ATTR_ENGINE_GLOBAL_INDEX, "ENGINE_GLOBAL_INDEX");
  } catch {
    return -1;
  }
}

/** Room for the numerical notes of one engine (cuDNN 9 has 10 kinds): an explicit ArrayBuffer. */
const notesOut = new Int32Array(new ArrayBuffer(64));

/** Whether the engine of `cfg` says it may be non-deterministic; null when its notes cannot be read. */
function nondeterministicNote(descs: Descriptors, cfg: Desc): boolean | null {
  try {
    const engine = engineOf(descs, cfg);
    const status = lib().fns.cudnnBackendGetAttribute(
      engine,
      C.CUDNN_ATTR_ENGINE_NUMERICAL_NOTE,
      C.CUDNN_TYPE_NUMERICAL_NOTE,
      notesOut.length,
      outCount,
      notesOut,
    );
    if (status !== C.CUDNN_STATUS_SUCCESS) return null;
    return notesOut.subarray(0, Number(outCount[0])).includes(C.CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC);
  } catch {
    return null;
  }
}

/**
 * Heuristics (mode A, then fallback) and the first engine configuration whose plan finalizes (and, when
 * `deterministic`, whose engine is not noted NONDETERMINISTIC).
 */
function makeExecutionPlan(
  descs: Descriptors,
  handle: number,
  graph: Desc,
  what: string,
  deterministic: boolean,
): { exec: Desc; engine: number; nondeterministicNote: boolean | null; workspaceBytes: number } {
  const fns = lib().fns;
  const tried: string[] = [];
  let lastStatus: number = C.CUDNN_STATUS_SUCCESS;
  for (const [modeName, mode] of [
    ["A", C.CUDNN_HEUR_MODE_A],
    ["FALLBACK", C.CUDNN_HEUR_MODE_FALLBACK],
  ] as const) {
    const heur = descs.create(C.CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "engine heuristics");
    setDescs(heur, C.CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, [graph], "engine heuristics");
    setEnum(heur, C.CUDNN_ATTR_ENGINEHEUR_MODE, C.CUDNN_TYPE_HEUR_MODE, mode, "engine heuristics");
    let status = fns.cudnnBackendFinalize(heur);
    if (status !== C.CUDNN_STATUS_SUCCESS) {
      lastStatus = status;
      const message = lastError();
      tried.push(`heuristics mode ${modeName}: ${statusName(status)}: ${message}`);
      continue;
    }
    status = fns.cudnnBackendGetAttribute(heur, C.CUDNN_ATTR_ENGINEHEUR_RESULTS, C.CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, outCount, null);
    check(status, "cudnnBackendGetAttribute(ENGINEHEUR_RESULTS count)", what);
    const count = Number(outCount[0]);
    if (count === 0) {
      tried.push(`heuristics mode ${modeName}: no engine configuration (${lastError() || "cuDNN gave no reason"})`);
      continue;
    }
    const cfgs = Array.from({ length: count }, () => descs.create(C.CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine configuration"));
    const arr = BigUint64Array.from(cfgs, (x) => BigInt(x));
    status = fns.cudnnBackendGetAttribute(heur, C.CUDNN_ATTR_ENGINEHEUR_RESULTS, C.CUDNN_TYPE_BACKEND_DESCRIPTOR, count, outCount, arr);
    check(status, "cudnnBackendGetAttribute(ENGINEHEUR_RESULTS)", what);
    const returned = Number(outCount[0]);
    for (let i = 0; i < returned; i++) {
      const cfg = cfgs[i] as Desc;
      const note = nondeterministicNote(descs, cfg);
      if (deterministic && note === true) {
        tried.push(`mode ${modeName} config ${i} (engine ${engineIndex(descs, cfg)}): noted CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC`);
        continue;
      }
      const exec = descs.create(C.CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, "execution plan");
      setHandle(exec, C.CUDNN_ATTR_EXECUTION_PLAN_HANDLE, handle, "execution plan");
      setDescs(exec, C.CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, [cfg], "execution plan");
      status = fns.cudnnBackendFinalize(exec);
      if (status === C.CUDNN_STATUS_SUCCESS) {
        const workspaceBytes = getAttrInt64(exec, C.CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, "EXECUTION_PLAN_WORKSPACE_SIZE");
        return { exec, engine: engineIndex(descs, cfg), nondeterministicNote: note, workspaceBytes };
      }
      lastStatus = status;
      const message = lastError();
      tried.push(`mode ${modeName} config ${i} (engine ${engineIndex(descs, cfg)}): ${statusName(status)}: ${message}`);
      descs.drop(exec);
    }
  }
  if (deterministic) {
    throw new AttentionError(
      `cuDNN ${fmtVersion(lib().version)} has no deterministic engine for the SDPA backward graph without the f32 dQ accumulator (${what}): ${tried.join("; ")}`,
    );
  }
  throw new CudnnError(
    "cudnnBackendFinalize(EXECUTION_PLAN)",
    lastStatus,
    lastStatus === C.CUDNN_STATUS_SUCCESS ? "no engine" : statusName(lastStatus),
    `no engine configuration finalized for this graph:\n  ${tried.join("\n  ")}`,
    what,
  );
}

/** Refuses a deterministic backward where cudnn-frontend does more than build its graph (sdpa.ts). */
function requireDeterministicEngine(device: number): void {
  const major = deviceAttribute(DeviceAttr.computeCapabilityMajor, device);
  if (major === 10)
    throw new AttentionError(
      `cudnn: deterministic backward: on compute capability 10.x cudnn-frontend also forces an engine and its knobs (cuDNN >= 9.18), which this backend does not do (cuDNN ${fmtVersion(lib().version)}, cuda:${device}); run without deterministic`,
    );
}

/** The cache key (and log name) of a plan: everything its graph depends on. */
export function planKey(device: number, pass: Pass, s: PlanShape): string {
  return `cuda:${device} ${pass} Tq=${s.Tq} Tk=${s.Tk} Hq=${s.Hq} Hkv=${s.Hkv} D=${s.D} causal=${s.causal} deterministic=${s.deterministic}`;
}

export function getPlan(device: number, pass: Pass, shape: PlanShape): Plan {
  if (pass === "forward" && shape.deterministic)
    throw new Error("cudnn: internal error: the forward has no deterministic variant (it is deterministic); pass deterministic: false");
  const key = planKey(device, pass, shape);
  const hit = plans.get(key);
  if (hit) return hit;
  const started = performance.now();
  const handle = handleFor(device);
  if (shape.deterministic) requireDeterministicEngine(device);
  const descs = new Descriptors();
  try {
    const g = new GraphBuilder(descs);
    const uids = pass === "forward" ? buildForward(g, shape) : buildBackward(g, shape);
    const graph = descs.create(C.CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
    setHandle(graph, C.CUDNN_ATTR_OPERATIONGRAPH_HANDLE, handle, "operation graph");
    setDescs(graph, C.CUDNN_ATTR_OPERATIONGRAPH_OPS, g.ops, "operation graph");
    finalize(graph, `${pass} operation graph (${g.ops.length} operations) for ${key}`);
    const { exec, engine, nondeterministicNote, workspaceBytes } = makeExecutionPlan(descs, handle, graph, key, shape.deterministic);
    const scalars = new ArrayBuffer(SCALAR.bytes);
    const view = new DataView(scalars);
    // cuDNN before 9.10 wants the most negative float rather than -inf for masked scores (cudnn-frontend).
    view.setFloat32(SCALAR.negInf, lib().version < 91000 ? -3.4028234663852886e38 : Number.NEGATIVE_INFINITY, true);
    view.setInt32(SCALAR.sKv, shape.Tk, true);
    view.setInt32(SCALAR.sQ, shape.Tq, true);
    view.setFloat32(SCALAR.one, 1, true);
    const plan: Plan = {
      key,
      pass,
      shape,
      device,
      exec,
      workspaceBytes,
      engine,
      nondeterministicNote,
      buildMs: performance.now() - started,
      uids,
      scalars,
      descs,
    };
    plans.set(key, plan);
    return plan;
  } catch (e) {
    descs.destroy();
    throw e;
  }
}

/** The plans built so far. */
export function cudnnPlans(): CudnnPlanInfo[] {
  return [...plans.values()].map((p) => ({
    key: p.key,
    pass: p.pass,
    engine: p.engine,
    nondeterministicNote: p.nondeterministicNote,
    workspaceBytes: p.workspaceBytes,
    buildMs: p.buildMs,
  }));
}

/** Destroys every cached plan (after the device has finished with them). */
export function clearCudnnPlans(): void {
  for (const p of plans.values()) p.descs.destroy();
  plans.clear();
}

/** Binds the tensors of `plan` (uid -> device address, scalars from the plan's host block) and runs it on `stream`. */
export function execute(
  plan: Plan,
  stream: Stream,
  bound: Partial<Record<keyof typeof UID, number>>,
  workspace: number,
  scale: number,
): void {
  const fns = lib().fns;
  const handle = handleFor(plan.device);
  new DataView(plan.scalars).setFloat32(SCALAR.scale, scale, true);
  const host = ptr(new Uint8Array(plan.scalars));
  const scalarAt: Record<number, number> = {
    [UID.scale]: host + SCALAR.scale,
    [UID.negInf]: host + SCALAR.negInf,
    [UID.sKv]: host + SCALAR.sKv,
    [UID.sQ]: host + SCALAR.sQ,
    [UID.one]: host + SCALAR.one,
  };
  const byUid = new Map<number, number>();
  for (const [name, addr] of Object.entries(bound)) byUid.set(UID[name as keyof typeof UID], addr as number);
  const ptrs = plan.uids.map((uid) => {
    const p = scalarAt[uid] ?? byUid.get(uid);
    if (p === undefined) throw new Error(`cudnn: internal error: no address bound for tensor uid ${uid} of ${plan.key}`);
    return p;
  });
  const what = `variant pack of ${plan.key}`;
  const descs = new Descriptors();
  try {
    const pack = descs.create(C.CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, what);
    setInt64(pack, C.CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, plan.uids, what);
    setPointers(pack, C.CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, ptrs, what);
    setPointers(pack, C.CUDNN_ATTR_VARIANT_PACK_WORKSPACE, [workspace], what);
    finalize(pack, what);
    check(fns.cudnnSetStream(handle, stream.handle), "cudnnSetStream");
    check(fns.cudnnBackendExecute(handle, plan.exec, pack), "cudnnBackendExecute", plan.key);
  } finally {
    descs.destroy(); // the launch has read the pack; the scalar block lives as long as the plan
  }
}
