// Learning rate: linear warmup to `lr` over `warmup` steps, then cosine decay to `minLr` at `decaySteps`,
// flat at `minLr` after. Steps count from 0 (the first update uses lrAt(0) = lr / warmup, never 0).

export interface LrSchedule {
  lr: number;
  minLr: number;
  warmup: number;
  decaySteps: number;
}

export function lrAt(step: number, s: LrSchedule): number {
  if (!Number.isSafeInteger(step) || step < 0) throw new RangeError(`lrAt: step must be an integer >= 0, got ${step}`);
  if (step < s.warmup) return (s.lr * (step + 1)) / s.warmup;
  const span = s.decaySteps - s.warmup;
  if (span <= 0) return s.lr;
  const progress = Math.min(1, (step - s.warmup) / span);
  return s.minLr + 0.5 * (s.lr - s.minLr) * (1 + Math.cos(Math.PI * progress));
}
