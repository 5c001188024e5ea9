// Tokenization on several cores: documents go to worker threads in batches (about `batchChars`
// characters each), and come back in the order they were read, so the token file is the same bytes
// whatever the number of workers (a test checks it against the single-thread path).

import { DataError } from "./tokenizer.ts";

export interface PoolOptions {
  workers: number;
  /** Characters per batch sent to a worker (default 256K). */
  batchChars?: number;
}

/** Each document's token ids, in input order, from `workers` threads. */
export async function* tokenizeInWorkers(
  tokenizer: string | null,
  docs: AsyncIterable<string>,
  o: PoolOptions,
): AsyncGenerator<Uint32Array> {
  const batchChars = o.batchChars ?? 256 * 1024;
  const workers = Array.from({ length: o.workers }, () => new Worker(new URL("./tokenize-worker.ts", import.meta.url).href));
  const pending = new Map<number, { resolve: (r: Uint32Array[]) => void; reject: (e: Error) => void }>();
  let failure: Error | null = null;
  for (const w of workers) {
    w.onmessage = (e: MessageEvent) => {
      const m = e.data as { id?: number; ids?: Uint32Array; lengths?: Uint32Array; error?: string };
      if (m.error !== undefined) {
        failure = new DataError(m.error);
        for (const p of pending.values()) p.reject(failure);
        return;
      }
      const out: Uint32Array[] = [];
      let off = 0;
      for (const n of m.lengths as Uint32Array) {
        out.push((m.ids as Uint32Array).subarray(off, off + n));
        off += n;
      }
      pending.get(m.id as number)?.resolve(out);
      pending.delete(m.id as number);
    };
    w.onerror = (e) => {
      failure = new DataError(`tokenize worker failed: ${e.message}`);
      for (const p of pending.values()) p.reject(failure);
    };
    w.postMessage({ tokenizer });
  }
  const inFlight: Promise<Uint32Array[]>[] = [];
  let nextId = 0;
  const send = (batch: string[]) => {
    const id = nextId++;
    const p = new Promise<Uint32Array[]>((resolve, reject) => pending.set(id, { resolve, reject }));
    (workers[id % workers.length] as Worker).postMessage({ id, docs: batch });
    inFlight.push(p);
  };
  try {
    let batch: string[] = [];
    let chars = 0;
    for await (const d of docs) {
      if (failure) throw failure;
      batch.push(d);
      chars += d.length;
      if (chars >= batchChars) {
        send(batch);
        batch = [];
        chars = 0;
        // Keep two batches per worker in flight: enough to hide the hand-offs, little memory.
        while (inFlight.length >= 2 * workers.length) for (const ids of await (inFlight.shift() as Promise<Uint32Array[]>)) yield ids;
      }
    }
    if (batch.length > 0) send(batch);
    while (inFlight.length > 0) for (const ids of await (inFlight.shift() as Promise<Uint32Array[]>)) yield ids;
  } finally {
    for (const w of workers) w.terminate();
  }
}
