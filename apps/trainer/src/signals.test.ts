import { expect, test } from "bun:test";
import { join } from "node:path";

const fixture = join(import.meta.dir, "fixtures", "stop-loop.ts");

async function runUntil(sameRequestMs: number, send: (p: Bun.Subprocess) => Promise<void>, stepMs = 20) {
  const p = Bun.spawn(["bun", fixture, String(sameRequestMs), String(stepMs)], { stdout: "pipe" });
  const reader = p.stdout.getReader();
  let out = "";
  while (!out.includes("step 3\n")) {
    const { value, done } = await reader.read();
    if (done) break;
    out += new TextDecoder().decode(value);
  }
  await send(p);
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    out += new TextDecoder().decode(value);
  }
  return { code: await p.exited, out };
}

test("SIGTERM and SIGINT: the loop finishes its step, writes its snapshot and exits 0", async () => {
  for (const sig of ["SIGTERM", "SIGINT"] as const) {
    const { code, out } = await runUntil(1000, async (p) => {
      p.kill(sig);
    });
    expect(code).toBe(0);
    expect(out).toContain(`received ${sig}: stopping after this step with a snapshot`);
    expect(out).toMatch(new RegExp(`snapshot at step \\d+ \\(${sig}\\)`));
  }
});

test("a repeat within the same request is ignored; a later one stops at once with 128 + signal", async () => {
  const twice = await runUntil(1000, async (p) => {
    p.kill("SIGINT");
    p.kill("SIGINT"); // the terminal's and the launcher's copy of one Ctrl-C
  });
  expect(twice.code).toBe(0);
  expect(twice.out).not.toContain("SIGINT again");
  expect(twice.out).toContain("snapshot at step");
  // Steps of 2 s after step 3: the second SIGTERM, 100 ms after the first, lands inside the step.
  const forced = await runUntil(
    50,
    async (p) => {
      p.kill("SIGTERM");
      await Bun.sleep(100);
      p.kill("SIGTERM");
    },
    2000,
  );
  expect(forced.code).toBe(143);
  expect(forced.out).toContain("received SIGTERM again: stopping now, without a snapshot");
  expect(forced.out).not.toContain("snapshot at step");
}, 20_000);
