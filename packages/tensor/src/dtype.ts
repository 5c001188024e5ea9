// Element types. bf16 has no JS TypedArray: on the CPU it is stored as raw bits in a Uint16Array and
// every op widens to f32, computes, and rounds back to nearest-even (the same as the CUDA kernels).

export type DType = "f32" | "bf16" | "i32";
export type HostArray = Float32Array | Uint16Array | Int32Array;

export const DTYPES: readonly DType[] = ["f32", "bf16", "i32"];

export function dtypeBytes(dtype: DType): number {
  switch (dtype) {
    case "f32":
      return 4;
    case "bf16":
      return 2;
    case "i32":
      return 4;
  }
}

export function isFloating(dtype: DType): boolean {
  return dtype !== "i32";
}

export function allocHost(dtype: DType, n: number): HostArray {
  switch (dtype) {
    case "f32":
      return new Float32Array(n);
    case "bf16":
      return new Uint16Array(n);
    case "i32":
      return new Int32Array(n);
  }
}

export function hostView(dtype: DType, buffer: ArrayBufferLike, byteOffset: number, n: number): HostArray {
  switch (dtype) {
    case "f32":
      return new Float32Array(buffer, byteOffset, n);
    case "bf16":
      return new Uint16Array(buffer, byteOffset, n);
    case "i32":
      return new Int32Array(buffer, byteOffset, n);
  }
}

export function assertDType(value: unknown, argName: string): DType {
  if (value === "f32" || value === "bf16" || value === "i32") return value;
  throw new TypeError(`${argName}: expected a dtype ("f32", "bf16" or "i32"), got ${JSON.stringify(value)}`);
}
