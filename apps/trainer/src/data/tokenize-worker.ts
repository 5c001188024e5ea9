// A tokenizer in a worker thread (tokenize-pool.ts sends it batches of documents).
//   in:  { tokenizer: string | null }                      once: which tokenizer to load
//        { id: number, docs: string[] }                    a batch
//   out: { id, ids: Uint32Array, lengths: Uint32Array }    every document's ids back to back
//        { error: string }                                 a failure (the pool rethrows it)
import { loadTokenizer, type TextTokenizer } from "./tokenizer.ts";

declare const self: Worker;
let tok: TextTokenizer | null = null;

self.onmessage = (e: MessageEvent) => {
  try {
    const m = e.data as { tokenizer?: string | null; id?: number; docs?: string[] };
    if ("tokenizer" in m) {
      tok = loadTokenizer(m.tokenizer ?? null);
      return;
    }
    if (!tok) throw new Error("tokenize worker: a batch came before the tokenizer");
    const all = (m.docs ?? []).map((d) => (tok as TextTokenizer).encode(d));
    const lengths = Uint32Array.from(all, (a) => a.length);
    const ids = new Uint32Array(lengths.reduce((a, b) => a + b, 0));
    let o = 0;
    for (const a of all) {
      ids.set(a, o);
      o += a.length;
    }
    self.postMessage({ id: m.id, ids, lengths }, [ids.buffer, lengths.buffer]);
  } catch (err) {
    self.postMessage({ error: (err as Error).message });
  }
};
