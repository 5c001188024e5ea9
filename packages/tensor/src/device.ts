// Devices: "cpu" or "cuda:N". Parsed once; compared by value.

export type Device = { readonly kind: "cpu" } | { readonly kind: "cuda"; readonly index: number };

export const CPU: Device = Object.freeze({ kind: "cpu" });

export function cuda(index = 0): Device {
  return { kind: "cuda", index };
}

export type DeviceLike = Device | string;

export function parseDevice(d: DeviceLike | undefined, argName = "device"): Device {
  if (d === undefined) return CPU;
  if (typeof d !== "string") return d;
  if (d === "cpu") return CPU;
  const m = /^cuda(?::(\d+))?$/.exec(d);
  if (m) return cuda(m[1] === undefined ? 0 : Number(m[1]));
  throw new TypeError(`${argName}: expected "cpu" or "cuda:N", got ${JSON.stringify(d)}`);
}

export function deviceName(d: Device): string {
  return d.kind === "cpu" ? "cpu" : `cuda:${d.index}`;
}

export function sameDevice(a: Device, b: Device): boolean {
  return a.kind === b.kind && (a.kind === "cpu" || a.index === (b as { index: number }).index);
}
