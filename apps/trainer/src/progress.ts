// Progress inside a long step: a 7B step at 256K tokens takes minutes, so the loop reports the layers
// done ("step 3: backward 12/32 layers, 41 s"), at most once per `everyMs` and only once the step has run
// longer than `afterMs` (short steps print nothing but their step line).

export interface StepProgressOptions {
  afterMs?: number;
  everyMs?: number;
  out?: (line: string) => void;
  now?: () => number;
}

export type Phase = "forward" | "backward" | "optimizer";

export class StepProgress {
  private start = 0;
  private last = 0;
  private step = 0;
  private readonly o: Required<StepProgressOptions>;

  constructor(
    readonly layers: number,
    o: StepProgressOptions = {},
  ) {
    this.o = {
      afterMs: o.afterMs ?? 5000,
      everyMs: o.everyMs ?? 5000,
      out: o.out ?? ((s) => console.log(s)),
      now: o.now ?? (() => performance.now()),
    };
  }

  begin(step: number): void {
    this.step = step;
    this.start = this.o.now();
    this.last = this.start;
  }

  /** Called as each layer of a phase finishes (`done` layers of this phase so far). */
  layerDone(phase: Phase, done: number): void {
    const now = this.o.now();
    if (now - this.start < this.o.afterMs || now - this.last < this.o.everyMs) return;
    this.last = now;
    this.o.out(`step ${this.step}: ${phase} ${done}/${this.layers} layers, ${((now - this.start) / 1000).toFixed(0)} s`);
  }
}
