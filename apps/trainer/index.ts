// `bun run apps/trainer`: parse the command line, resolve and print the config.
import { probeGpus } from "@lightseq/cuda";
import { runCli } from "./src/cli.ts";
import { formatConfig } from "./src/config.ts";

const machine = { gpus: probeGpus().count };
const r = await runCli(process.argv.slice(2), machine);
if (r.exit !== null) process.exit(r.exit);
console.log(`config (preset ${r.config.preset}):\n${formatConfig(r.config)}`);
