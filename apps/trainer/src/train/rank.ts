// One rank of a training run (started by the launcher in ../../index.ts, one process per GPU or CPU
// rank). Arguments: the run's resolved config file (DIR/train-config.json) and the token file the
// launching process prepared.
//
// Per step (DESIGN.md section 4): this replica's sequences of the global batch; for each, this rank's
// chunks (zigzag placement) through the model with DistAttn over the cp group and ZeRO-3 weights and
// gradients over every rank (zero.ts); then one all-gather of five numbers per rank (loss sum, sum of
// squares of the gradient shards, stop flag, peak memory) that every rank reduces alike in f64, the
// clip coefficient, and AdamW on each buffer's shard. The label count of the global batch is
// all-gathered before the first backward so gradScale = 1 / count: the loss is the mean over every
// valid label of the batch, whatever the mesh.
// The plan (plan.ts, printed at start with its memory numbers) also decides whether the checkpoints
// spill to pinned host memory (checkpointing's OffloadActivationStore, the last deviceLayers kept on
// the GPU) and whether the MLP is tiled; both go to the model through parallelize's options.

import { hostname, totalmem } from "node:os";
import { localRanges, placeSequence, referenceBackend, selectAttentionBackend } from "@lightseq/attention";
import { layerKinds, storeForOffload } from "@lightseq/checkpointing";
import { type Communicator, initCommunicator } from "@lightseq/comm";
import type { Stream } from "@lightseq/cuda";
import { llamaPreset, parallelize } from "@lightseq/llama";
import {
  cpuMatmulInfo,
  currentStream,
  empty,
  fromArray,
  memoryReport,
  setCpuMatmul,
  sumOfSquares,
  type Tensor,
  toFloat32Array,
} from "@lightseq/tensor";
import type { TrainConfig } from "../config.ts";
import { SequenceOrder, sequencesForStep } from "../data/order.ts";
import { PackedSequences } from "../data/sequences.ts";
import { openTokenFile } from "../data/token-file.ts";
import { formatStepLine, MetricsLog, peakMemoryBytes, stepRecord } from "../metrics.ts";
import { clipCoefficient, globalNorm } from "../optim/clip.ts";
import { lrAt } from "../optim/schedule.ts";
import { writeLossPlot } from "../plot.ts";
import { StepProfiler } from "../profile.ts";
import { StepProgress } from "../progress.ts";
import { type RunState, runPaths } from "../run.ts";
import { StopRequest } from "../signals.ts";
import { finalizeSnapshot, latestComplete, readRankShards, snapshotsDir, writeRankShards } from "../snapshot.ts";
import { bufferSpecs, initialTensor } from "./buffers.ts";
import { exportHf, initFromHf } from "./hf-io.ts";
import { planRun } from "./plan.ts";
import { makeState, residentBuffers } from "./state.ts";
import { ZeroGradientSink, ZeroWeightSource, zeroStreams } from "./zero.ts";

/**
 * Where a rank's start-up goes (one line before the first step): the time since the process began
 * (bun, imports, CUDA libraries) and each phase after it; on one GPU a 7B run's start-up is ~90 s.
 */
class StartupClock {
  /** Milliseconds from the process's start to this clock's creation. */
  readonly #before = process.uptime() * 1000;
  #last = performance.now();
  readonly #phases: [string, number][] = [];

  mark(name: string): void {
    const now = performance.now();
    this.#phases.push([name, now - this.#last]);
    this.#last = now;
  }

  line(): string {
    const total = process.uptime();
    const parts = [["process start and imports", this.#before] as const, ...this.#phases].map(
      ([n, ms]) => `${n} ${(ms / 1000).toFixed(1)}`,
    );
    return `start-up: ${total.toFixed(1)} s (${parts.join(", ")} s)`;
  }
}

/** This rank's world rank once known (for the one line a failure prints). */
let whoAmI = "rank ?";

async function main(): Promise<void> {
  const [configPath, tokenPath] = process.argv.slice(2);
  if (!configPath || !tokenPath) throw new Error("usage: bun rank.ts DIR/train-config.json TOKEN_FILE (started by apps/trainer)");
  const cfg = (await Bun.file(configPath).json()) as TrainConfig;

  const gpu = process.env.LIGHTSEQ_TRAIN_DEVICE === "cuda";
  const startup = new StartupClock();
  const world: Communicator = await initCommunicator({ backend: gpu ? "nccl" : "cpu" });
  startup.mark("communicator");
  const R = world.size;
  const rank = world.rank;
  const rank0 = rank === 0;
  whoAmI = `rank ${rank}`;
  const log = (s: string) => {
    if (rank0) console.log(s);
  };
  const stop = new StopRequest({ log }).install();
  const cp = cfg.cp;
  const dp = R / cp;
  if (!Number.isInteger(dp)) throw new Error(`--cp ${cp} does not divide the ${R} ranks`);
  const replica = Math.floor(rank / cp);
  const cpRank = rank % cp;
  // Ranks of one replica form the sequence-parallel group; DistAttn's traffic has its own communicator.
  const cpComm = (await world.split(replica, cpRank)) as Communicator;

  const model = llamaPreset(cfg.model);
  const device = gpu ? "cuda:0" : "cpu";
  let compute: Stream | null = null;
  if (gpu) {
    compute = currentStream(0);
  } else {
    setCpuMatmul("blas");
    const m = cpuMatmulInfo();
    log(`cpu matmul: ${m.mode}${m.blas ? ` (${m.blas.flavor}, ${m.blas.threads} thread(s), ${m.blas.path})` : ""}`);
  }
  if (!gpu && cfg.attention !== "auto")
    throw new Error(`--attention ${cfg.attention} needs a GPU; CPU ranks run the reference attention (leave --attention auto)`);
  const attention = gpu
    ? selectAttentionBackend(cfg.attention, device, { deterministic: cfg.deterministic })
    : {
        backend: referenceBackend,
        reason: `attention: reference (cpu ranks${cfg.deterministic ? "; --deterministic: its backward is deterministic already" : ""})`,
      };
  log(attention.reason);

  const deviceBytes = gpu ? memoryReport(device).deviceTotal : Math.floor(totalmem() / Math.max(1, R));
  const plan = planRun({
    model,
    seq: cfg.seq,
    cp,
    dp,
    policy: cfg.policy,
    optimizer: cfg.optimizer,
    gpu,
    deviceBytes,
    hostBytes: Math.floor((0.85 * totalmem()) / Math.max(1, R)),
    perLayer: cfg.update === "per-layer",
  });
  log(`policy ${cfg.policy === "auto" ? "auto -> " : ""}${plan.reason}`);
  log(plan.memory);

  const specs = bufferSpecs(model);
  const hyper = { lr: cfg.lr, beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.eps, weightDecay: cfg.weightDecay };
  startup.mark("plan");
  const state = makeState(plan.state, specs, rank, R, hyper, compute, plan.resident ? residentBuffers(specs) : []);
  startup.mark(plan.state === "host" ? "optimizer state (pinned host memory)" : "optimizer state");
  const streams = compute ? zeroStreams(compute) : null;
  const weights = new ZeroWeightSource(model, world, state, streams);
  // --update per-layer: each buffer's AdamW step as soon as its gradient is reduced (comm stream
  // order), clipped by the previous step's norm (step 1: none; AdamW's first update is scale-free).
  const perLayer = cfg.update === "per-layer";
  const live = { t: 0, lr: 0, clip: 1 };
  let prevNorm: number | null = null;
  const grads = new ZeroGradientSink(
    model,
    world,
    state,
    specs.map((s) => s.name),
    streams,
    perLayer
      ? (name, shard, consumed) =>
          state.step(name, shard, live.t, live.lr, live.clip, { stream: streams?.comm, consumed: consumed ?? undefined })
      : null,
  );
  using store =
    plan.offload === "spill"
      ? storeForOffload("spill", { layers: model.layers, deviceLayers: plan.deviceLayers, stream: compute ?? undefined })
      : null;
  const pm = parallelize(
    { config: model, source: weights },
    { comm: cpComm, schedule: "zigzag", N: cfg.seq, backend: attention.backend, stream: compute ?? undefined },
    {
      policy: plan.policy,
      // spill: the first layers' checkpoints go to pinned host memory, the last deviceLayers stay.
      store: store ?? undefined,
      lossChunkTokens: plan.lossChunkTokens,
      mlpChunkTokens: plan.mlpChunkTokens ?? undefined,
    },
  );
  log(`attention: ${pm.attention.name}; ZeRO-3 over ${R} rank(s) (cp ${cp} x dp ${dp}), ${specs.length} buffers`);
  log(
    perLayer
      ? "update: per layer, right after its gradient is reduced (overlapping the backward); clipped by the previous step's gradient norm"
      : "update: after the whole backward, clipped by this step's gradient norm",
  );

  const seqs = new PackedSequences(openTokenFile(tokenPath), cfg.seq);
  const paths = runPaths(cfg.out);
  let startStep = 0;
  startup.mark("model and data");
  let order: SequenceOrder;
  if (cfg.resume) {
    const { found } = latestComplete(snapshotsDir(cfg.out));
    if (!found) throw new Error(`--resume: no complete snapshot in ${snapshotsDir(cfg.out)}`);
    state.restore(readRankShards(found, rank, R, state.snapshotLayout()));
    const s = found.manifest.state as RunState;
    startStep = s.step;
    order = new SequenceOrder(seqs.count, cfg.seed, s.order);
    const saved = s.extra?.prevNorm;
    prevNorm = typeof saved === "number" ? saved : null;
    log(`resumed from ${found.dir} (step ${s.step}, mesh cp ${found.manifest.mesh.cp} x dp ${found.manifest.mesh.dp})`);
  } else {
    if (cfg.initFrom !== null) {
      await initFromHf(cfg.initFrom, model, specs, state);
      log(`weights from ${cfg.initFrom}`);
    } else {
      for (const s of specs) {
        using t = initialTensor(model, s.name, cfg.seed, device);
        state.initFromTensor(s.name, t);
      }
    }
    order = new SequenceOrder(seqs.count, cfg.seed);
  }
  startup.mark(cfg.resume ? "restore" : "weights");
  log(startup.line());
  const metrics = rank0 ? (cfg.resume ? MetricsLog.resume(paths.dir, startStep) : MetricsLog.create(paths.dir)) : null;
  const points = metrics ? metrics.read().map((r) => ({ step: r.step, loss: r.loss })) : [];

  /** Every rank's numbers, all-gathered as f32 pairs (hi + lo) and summed or maxed here in f64: the same on every rank. */
  async function combine(values: number[]): Promise<number[][]> {
    const n = values.length;
    const mine = new Float32Array(2 * n);
    for (const [i, v] of values.entries()) {
      mine[2 * i] = Math.fround(v);
      mine[2 * i + 1] = v - Math.fround(v);
    }
    // On a GPU every collective of the world communicator runs on the comm stream, in one order.
    const stream = streams?.comm;
    using t = fromArray(mine, [2 * n], { device, stream });
    using all = empty([2 * n * R], { device, stream });
    await world.allGather(t, all, stream ? { stream } : {});
    const a = toFloat32Array(all, { stream });
    return Array.from({ length: R }, (_, r) =>
      Array.from({ length: n }, (_, i) => (a[2 * (r * n + i)] as number) + (a[2 * (r * n + i) + 1] as number)),
    );
  }

  const ranges = localRanges(pm.attention.schedule, placeSequence(pm.attention.schedule, cfg.seq), cpRank);
  const progress = new StepProgress(model.layers, { out: log });
  let forwardDone = 0;
  let backwardDone = 0;
  // --profile (rank 0): marks at the same hooks, one block per step after its line (profile.ts).
  using profiler =
    cfg.profile && rank0 ? new StepProfiler(layerKinds(plan.policy, model.layers), compute, cfg.out, { resume: cfg.resume }) : null;
  weights.onLayer = (i) => {
    profiler?.layer(i);
    // The forward asks for each layer once; the backward's requests come after it.
    if (forwardDone < model.layers) progress.layerDone("forward", ++forwardDone);
  };
  grads.onLayerDone = (i) => {
    profiler?.layerDone(i);
    progress.layerDone("backward", ++backwardDone);
  };
  if (profiler) {
    weights.onRelease = (i) => profiler.released(i);
    grads.onNonLayer = () => profiler.loss();
  }

  async function snapshot(step: number): Promise<void> {
    const t0 = performance.now();
    const root = snapshotsDir(cfg.out);
    const layout = state.snapshotLayout();
    writeRankShards(root, step, rank, R, layout, state.snapshotArrays());
    await world.barrier();
    if (rank0) {
      const runState: RunState = { step, config: cfg, order: order.state(), extra: { prevNorm } };
      const info = finalizeSnapshot(root, step, {
        mesh: { cp, dp },
        layout,
        arrays: ["master", "m", "v"],
        state: runState,
        keep: cfg.keepSnapshots,
      });
      log(`snapshot ${info.dir} (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
    }
    await world.barrier();
  }

  let lastPlot = 0;
  let stoppedBy: string | null = null;
  let step = startStep;
  for (; step < cfg.steps; step++) {
    const t0 = performance.now();
    profiler?.begin();
    progress.begin(step + 1);
    grads.beginStep();
    live.t = step + 1;
    live.lr = lrAt(step, cfg);
    live.clip = prevNorm === null ? 1 : clipCoefficient(prevNorm, cfg.gradClip);
    const mine = sequencesForStep(order, cfg.batch, dp, replica).map((i) => seqs.chunks(i, ranges));
    let localLabels = 0;
    for (const b of mine) for (const l of b.labels) if (l >= 0) localLabels++;
    // Each sequence's labels are split over its cp ranks: the sum over every rank is the batch's count.
    const count = (await combine([localLabels])).reduce((a, [c]) => a + (c as number), 0);
    let lossSum = 0;
    for (const b of mine) {
      forwardDone = 0;
      backwardDone = 0;
      const r = await pm.model.forwardBackward(b, grads, { gradScale: 1 / count });
      lossSum += r.lossSum;
      profiler?.sequenceEnd();
    }
    grads.settle();
    profiler?.settled();
    let sq = 0;
    if (perLayer) {
      for (const t of grads.sumSquares) sq += toFloat32Array(t, { stream: compute ?? undefined })[0] as number;
    } else {
      for (const shard of grads.shards.values()) {
        using s = sumOfSquares(shard, { stream: compute ?? undefined });
        sq += toFloat32Array(s, { stream: compute ?? undefined })[0] as number;
      }
    }
    profiler?.normed();
    const mem = peakMemoryBytes(gpu ? "cuda:0" : "cpu") / 2 ** 20;
    const hostMem = gpu ? peakMemoryBytes("cpu") / 2 ** 20 : 0;
    const all = await combine([lossSum, sq, stop.requested ? 1 : 0, mem, hostMem]);
    profiler?.combined();
    const total = (k: number) => all.reduce((a, v) => a + (v[k] as number), 0);
    const norm = globalNorm(total(1));
    const lr = live.lr;
    if (!perLayer) {
      const clip = clipCoefficient(norm, cfg.gradClip);
      for (const s of specs) state.step(s.name, grads.shards.get(s.name) as Tensor, step + 1, lr, clip);
    }
    prevNorm = norm;
    state.stepsDone();
    weights.invalidate();
    profiler?.end();
    compute?.synchronize();
    const seconds = (performance.now() - t0) / 1000;
    const profile = profiler?.finish(step + 1);
    const loss = total(0) / count;
    if (metrics) {
      const rec = stepRecord({
        step: step + 1,
        loss,
        lr,
        gradNorm: norm,
        sequences: cfg.batch,
        seq: cfg.seq,
        seconds,
        ranks: R,
        shape: model,
        peakMemBytes: Math.max(...all.map((v) => v[3] as number)) * 2 ** 20,
        ...(gpu ? { hostMemBytes: Math.max(...all.map((v) => v[4] as number)) * 2 ** 20 } : {}),
      });
      console.log(formatStepLine(rec, cfg.steps));
      if (profile) console.log(profile);
      metrics.append(rec);
      points.push({ step: rec.step, loss: rec.loss });
      if (performance.now() - lastPlot > 2000 || step + 1 === cfg.steps) {
        writeLossPlot(paths.dir, points, { title: `${cfg.model}, ${cfg.seq} tokens x ${cfg.batch}` });
        lastPlot = performance.now();
      }
    }
    const stopping = total(2) > 0;
    if (stopping) stoppedBy = stop.requested ?? "a stop request on another rank";
    const done = step + 1;
    const due = cfg.snapshots && cfg.snapshotEvery > 0 && done % cfg.snapshotEvery === 0;
    if ((stopping && cfg.snapshots) || (due && done < cfg.steps)) await snapshot(done);
    if (stopping) {
      step++;
      break;
    }
  }

  if (stoppedBy !== null) {
    log(
      `stopped at step ${step} (${stoppedBy})${cfg.snapshots ? "; resume with --resume" : " (--snapshots=false: nothing to resume from)"}`,
    );
  } else {
    if (cfg.snapshots && step > startStep) await snapshot(step);
    if (cfg.export) {
      const files = await exportHf(paths.hf, model, specs, state, world);
      log(`exported ${files.length} files to ${paths.hf}`);
    }
    if (metrics) writeLossPlot(paths.dir, points, { title: `${cfg.model}, ${cfg.seq} tokens x ${cfg.batch}` });
  }
  log(
    `run folder ${paths.dir} on ${hostname()}: metrics.jsonl, loss.png${cfg.snapshots ? ", snapshots/" : ""}${stoppedBy === null && cfg.export ? ", hf/" : ""}`,
  );
  await world.barrier();
  stop.uninstall();
}

try {
  await main();
  process.exit(0);
} catch (e) {
  // One line: the launcher prefixes it with the rank and names the first rank that failed.
  console.error(`${whoAmI}: ${(e as Error).message}`);
  if (process.env.LIGHTSEQ_TRAIN_TRACE === "1") console.error((e as Error).stack);
  process.exit(1);
}
