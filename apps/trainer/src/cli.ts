// Command line: `--key value` or `--key=value` for every config key (flag names in config.ts FIELDS),
// `--config FILE` (JSON of config keys), `--help`, `--version`. A boolean flag alone means true
// (`--resume`), `--resume=false` turns it off. Nothing positional. A bad flag is a CliError: one line,
// exit status 2.

import { LIGHTSEQ_VERSION } from "@lightseq/cuda";
import {
  CONFIG_KEYS,
  ConfigError,
  FIELDS,
  type Machine,
  type ModelValidator,
  PRESETS,
  parseFlagValue,
  readConfigFile,
  resolveConfig,
  type TrainConfig,
} from "./config.ts";

/** The one version of every lightseq package (what `lightseq-launch --version` prints too). */
export const VERSION: string = LIGHTSEQ_VERSION;

export type Command = { kind: "help" } | { kind: "version" } | { kind: "run"; flags: Partial<TrainConfig>; configFile: string | null };

const byFlag = new Map<string, keyof TrainConfig>(CONFIG_KEYS.map((k) => [FIELDS[k].flag, k]));

/** Parses argv (without the program); throws ConfigError naming the offending argument. */
export function parseArgs(argv: readonly string[]): Command {
  const flags: Record<string, unknown> = {};
  let configFile: string | null = null;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (arg === "--help" || arg === "-h") return { kind: "help" };
    if (arg === "--version" || arg === "-V") return { kind: "version" };
    if (!arg.startsWith("--")) throw new ConfigError(`unexpected argument "${arg}": every option is a --flag (see --help)`);
    const eq = arg.indexOf("=");
    const name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
    const inline = eq < 0 ? undefined : arg.slice(eq + 1);
    if (name === "config") {
      const v = inline ?? argv[++i];
      if (v === undefined || v === "") throw new ConfigError("--config needs a file path");
      configFile = v;
      continue;
    }
    const key = byFlag.get(name);
    if (!key) throw new ConfigError(`unknown flag --${name}${suggest(name)} (see --help)`);
    if (key in flags) throw new ConfigError(`--${name} given twice`);
    if (FIELDS[key].kind.t === "bool" && inline === undefined) {
      flags[key] = true;
      continue;
    }
    const text = inline ?? argv[++i];
    if (text === undefined || (inline === undefined && text.startsWith("--")))
      throw new ConfigError(`--${name} needs a value (${FIELDS[key].meta ?? "VALUE"})`);
    flags[key] = parseFlagValue(key, text);
  }
  return { kind: "run", flags: flags as Partial<TrainConfig>, configFile };
}

function suggest(name: string): string {
  const close = [...byFlag.keys(), "config"].filter((f) => f.startsWith(name.slice(0, 3)) || name.startsWith(f));
  return close.length > 0 ? ` (did you mean --${close[0]}?)` : "";
}

/** --help: every flag with its default under the machine's default preset. */
export function formatHelp(m: Machine): string {
  const defaults = resolveConfig({ machine: m });
  const rows = CONFIG_KEYS.map((k) => {
    const f = FIELDS[k];
    const left = `--${f.flag}${f.meta ? ` ${f.meta}` : ""}`;
    return [left, `${f.help} [${JSON.stringify(defaults[k])}]`] as [string, string];
  });
  rows.push(["--config FILE", "JSON object of config keys (camelCase names as printed at start), applied before the flags"]);
  rows.push(["--help", "this list"], ["--version", "print the version"]);
  const w = Math.max(...rows.map(([l]) => l.length));
  return [
    `lightseq trainer ${VERSION}: train a Llama on long sequences split across ranks`,
    "",
    "usage: bun run apps/trainer [--flag value ...]",
    "",
    `presets: ${Object.keys(PRESETS).join(", ")}; defaults in brackets are those of "${defaults.preset}" on this machine (${m.gpus} GPU(s))`,
    "",
    ...rows.map(([l, r]) => `  ${l.padEnd(w)}  ${r}`),
  ].join("\n");
}

export type CliResult = { exit: number } | { exit: null; config: TrainConfig };

/**
 * The whole command line: help and version print and return an exit status; a run returns the resolved
 * config. Errors print one line to stderr and return exit status 2.
 */
export async function runCli(
  argv: readonly string[],
  m: Machine,
  validateModel?: ModelValidator,
  io: { out: (s: string) => void; err: (s: string) => void } = { out: console.log, err: console.error },
): Promise<CliResult> {
  try {
    const cmd = parseArgs(argv);
    if (cmd.kind === "help") {
      io.out(formatHelp(m));
      return { exit: 0 };
    }
    if (cmd.kind === "version") {
      io.out(VERSION);
      return { exit: 0 };
    }
    const file = cmd.configFile ? await readConfigFile(cmd.configFile) : undefined;
    return { exit: null, config: resolveConfig({ machine: m, file, flags: cmd.flags, validateModel }) };
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    io.err(`trainer: ${e.message}`);
    return { exit: 2 };
  }
}
