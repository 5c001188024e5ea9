// Stop requests: SIGINT or SIGTERM (a Ctrl-C, a scheduler's preemption) sets a flag that the training
// loop reads between steps; the loop then writes a snapshot and exits 0. All ranks must stop at the same
// step, so the loop combines every rank's flag (an all-reduce of max) before acting on it.
//
// One Ctrl-C reaches a rank twice (the terminal signals the whole process group, and the launcher
// forwards what it got): signals within `sameRequestMs` of the first count as one request. A signal
// after that means "stop now": the process exits at once with 128 + the signal number, no snapshot.

const SIGNAL_NUMBERS: Partial<Record<NodeJS.Signals, number>> = { SIGINT: 2, SIGTERM: 15 };

export interface StopOptions {
  signals?: NodeJS.Signals[];
  sameRequestMs?: number;
  log?: (line: string) => void;
  /** How "stop now" ends the process (tests replace it). */
  exit?: (code: number) => void;
}

export class StopRequest implements Disposable {
  private signal: NodeJS.Signals | null = null;
  private at = 0;
  private readonly handlers = new Map<NodeJS.Signals, () => void>();
  private readonly o: Required<StopOptions>;

  constructor(o: StopOptions = {}) {
    this.o = {
      signals: o.signals ?? ["SIGINT", "SIGTERM"],
      sameRequestMs: o.sameRequestMs ?? 1000,
      log: o.log ?? ((s) => console.error(s)),
      exit: o.exit ?? ((c) => process.exit(c)),
    };
  }

  /** Starts listening (replacing the default "terminate" action of these signals). */
  install(): this {
    for (const sig of this.o.signals) {
      const h = () => this.onSignal(sig);
      this.handlers.set(sig, h);
      process.on(sig, h);
    }
    return this;
  }

  uninstall(): void {
    for (const [sig, h] of this.handlers) process.off(sig, h);
    this.handlers.clear();
  }

  [Symbol.dispose](): void {
    this.uninstall();
  }

  /** The signal that asked to stop, or null. */
  get requested(): NodeJS.Signals | null {
    return this.signal;
  }

  private onSignal(sig: NodeJS.Signals): void {
    const now = performance.now();
    if (this.signal === null) {
      this.signal = sig;
      this.at = now;
      this.o.log(`received ${sig}: stopping after this step with a snapshot (send it again to stop at once, without one)`);
      return;
    }
    if (now - this.at < this.o.sameRequestMs) return;
    this.o.log(`received ${sig} again: stopping now, without a snapshot`);
    this.o.exit(128 + (SIGNAL_NUMBERS[sig] ?? 0));
  }
}
