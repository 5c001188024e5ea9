// cuDNN's backend (graph) API as we use it: descriptors owned in groups, typed attribute setters and a
// builder that adds tensors and operations to one operation graph. No C shim: every call takes handles,
// pointers and scalars. The SDPA graphs themselves are in sdpa.ts.

import { CUDNN_ABI as C } from "./abi.ts";
import { check, lib } from "./library.ts";

export type Desc = number;

export const outDesc = new BigUint64Array(new ArrayBuffer(8));
export const outCount = new BigInt64Array(new ArrayBuffer(8));
export const outI64 = new BigInt64Array(new ArrayBuffer(8));

/** Every descriptor made for one plan, destroyed together (reverse order) when the plan goes. */
export class Descriptors {
  readonly all: Desc[] = [];

  create(type: number, what: string): Desc {
    check(lib().fns.cudnnBackendCreateDescriptor(type, outDesc), "cudnnBackendCreateDescriptor", what);
    const d = Number(outDesc[0]);
    this.all.push(d);
    return d;
  }

  /** Destroys one descriptor now (a plan that did not finalize). */
  drop(d: Desc): void {
    const i = this.all.lastIndexOf(d);
    if (i >= 0) this.all.splice(i, 1);
    lib().fns.cudnnBackendDestroyDescriptor(d);
  }

  destroy(): void {
    for (let i = this.all.length - 1; i >= 0; i--) lib().fns.cudnnBackendDestroyDescriptor(this.all[i] as Desc);
    this.all.length = 0;
  }
}

function setAttr(d: Desc, attr: number, type: number, count: number, values: NodeJS.TypedArray, what: string): void {
  check(lib().fns.cudnnBackendSetAttribute(d, attr, type, count, values), "cudnnBackendSetAttribute", `${what}, attribute ${attr}`);
}

export const setDescs = (d: Desc, attr: number, descs: readonly Desc[], what: string) =>
  setAttr(
    d,
    attr,
    C.CUDNN_TYPE_BACKEND_DESCRIPTOR,
    descs.length,
    BigUint64Array.from(descs, (x) => BigInt(x)),
    what,
  );
export const setInt64 = (d: Desc, attr: number, xs: readonly number[], what: string) =>
  setAttr(
    d,
    attr,
    C.CUDNN_TYPE_INT64,
    xs.length,
    BigInt64Array.from(xs, (x) => BigInt(x)),
    what,
  );
/** C enums are 32-bit ints. */
export const setEnum = (d: Desc, attr: number, type: number, value: number, what: string) =>
  setAttr(d, attr, type, 1, Int32Array.of(value), what);
export const setFloat = (d: Desc, attr: number, value: number, what: string) =>
  setAttr(d, attr, C.CUDNN_TYPE_FLOAT, 1, Float32Array.of(value), what);
/** C bool: one byte. */
export const setBool = (d: Desc, attr: number, value: boolean, what: string) =>
  setAttr(d, attr, C.CUDNN_TYPE_BOOLEAN, 1, Uint8Array.of(value ? 1 : 0), what);
export const setHandle = (d: Desc, attr: number, handle: number, what: string) =>
  setAttr(d, attr, C.CUDNN_TYPE_HANDLE, 1, BigUint64Array.of(BigInt(handle)), what);
export const setPointers = (d: Desc, attr: number, ptrs: readonly number[], what: string) =>
  setAttr(
    d,
    attr,
    C.CUDNN_TYPE_VOID_PTR,
    ptrs.length,
    BigUint64Array.from(ptrs, (x) => BigInt(x)),
    what,
  );

export function finalize(d: Desc, what: string): void {
  check(lib().fns.cudnnBackendFinalize(d), "cudnnBackendFinalize", what);
}

const VIRTUAL_UID = 1000;

export interface TensorRef {
  desc: Desc;
  uid: number;
  dims: readonly number[];
  strides: readonly number[];
}

/** Builds one operation graph: tensors, then operations in the order they are added. */
export class GraphBuilder {
  readonly ops: Desc[] = [];
  #nextUid = VIRTUAL_UID;

  constructor(readonly d: Descriptors) {}

  tensor(
    uid: number,
    dims: readonly number[],
    strides: readonly number[],
    dtype: number,
    kind: "real" | "virtual" | "by-value",
  ): TensorRef {
    const what = `tensor uid ${uid} dims [${dims.join(", ")}]`;
    const t = this.d.create(C.CUDNN_BACKEND_TENSOR_DESCRIPTOR, what);
    setEnum(t, C.CUDNN_ATTR_TENSOR_DATA_TYPE, C.CUDNN_TYPE_DATA_TYPE, dtype, what);
    setInt64(t, C.CUDNN_ATTR_TENSOR_DIMENSIONS, dims, what);
    setInt64(t, C.CUDNN_ATTR_TENSOR_STRIDES, strides, what);
    setInt64(t, C.CUDNN_ATTR_TENSOR_UNIQUE_ID, [uid], what);
    setInt64(t, C.CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, [16], what);
    if (kind === "virtual") setBool(t, C.CUDNN_ATTR_TENSOR_IS_VIRTUAL, true, what);
    if (kind === "by-value") setBool(t, C.CUDNN_ATTR_TENSOR_IS_BY_VALUE, true, what);
    finalize(t, what);
    return { desc: t, uid, dims, strides };
  }

  virtual(dims: readonly number[], strides: readonly number[], dtype: number): TensorRef {
    return this.tensor(this.#nextUid++, dims, strides, dtype, "virtual");
  }

  /** A scalar passed by value at execution (shaped [1, 1, 1, 1] to match the 4-d operands). */
  scalar(uid: number, dtype: number): TensorRef {
    return this.tensor(uid, [1, 1, 1, 1], [1, 1, 1, 1], dtype, "by-value");
  }

  /** y = mode(x[, b[, t]]); y defaults to a virtual tensor shaped like x. */
  pointwise(
    name: string,
    mode: number,
    x: TensorRef,
    o: { b?: TensorRef; t?: TensorRef; y?: TensorRef; yType?: number; compute?: number; axis?: number } = {},
  ): TensorRef {
    const y = o.y ?? this.virtual(x.dims, x.strides, o.yType ?? C.CUDNN_DATA_FLOAT);
    const pw = this.d.create(C.CUDNN_BACKEND_POINTWISE_DESCRIPTOR, name);
    setEnum(pw, C.CUDNN_ATTR_POINTWISE_MODE, C.CUDNN_TYPE_POINTWISE_MODE, mode, name);
    setEnum(pw, C.CUDNN_ATTR_POINTWISE_MATH_PREC, C.CUDNN_TYPE_DATA_TYPE, o.compute ?? C.CUDNN_DATA_FLOAT, name);
    if (o.axis !== undefined) setInt64(pw, C.CUDNN_ATTR_POINTWISE_AXIS, [o.axis], name);
    finalize(pw, name);
    const op = this.d.create(C.CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, name);
    setDescs(op, C.CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, [pw], name);
    setDescs(op, C.CUDNN_ATTR_OPERATION_POINTWISE_XDESC, [x.desc], name);
    if (o.b) setDescs(op, C.CUDNN_ATTR_OPERATION_POINTWISE_BDESC, [o.b.desc], name);
    if (o.t) setDescs(op, C.CUDNN_ATTR_OPERATION_POINTWISE_TDESC, [o.t.desc], name);
    setDescs(op, C.CUDNN_ATTR_OPERATION_POINTWISE_YDESC, [y.desc], name);
    setFloat(op, C.CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, 1, name);
    setFloat(op, C.CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, 1, name);
    finalize(op, name);
    this.ops.push(op);
    return y;
  }

  /** c = a @ b over the last two dims, batched (and broadcast: kv heads over query heads) over the rest. */
  matmul(name: string, a: TensorRef, b: TensorRef, c: TensorRef): TensorRef {
    const mm = this.d.create(C.CUDNN_BACKEND_MATMUL_DESCRIPTOR, name);
    setEnum(mm, C.CUDNN_ATTR_MATMUL_COMP_TYPE, C.CUDNN_TYPE_DATA_TYPE, C.CUDNN_DATA_FLOAT, name);
    finalize(mm, name);
    const op = this.d.create(C.CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, name);
    setDescs(op, C.CUDNN_ATTR_OPERATION_MATMUL_ADESC, [a.desc], name);
    setDescs(op, C.CUDNN_ATTR_OPERATION_MATMUL_BDESC, [b.desc], name);
    setDescs(op, C.CUDNN_ATTR_OPERATION_MATMUL_CDESC, [c.desc], name);
    setDescs(op, C.CUDNN_ATTR_OPERATION_MATMUL_DESC, [mm], name);
    finalize(op, name);
    this.ops.push(op);
    return c;
  }

  /** y = reduce(x) over the dims where y is smaller. */
  reduction(name: string, operator: number, x: TensorRef, y: TensorRef): TensorRef {
    const rd = this.d.create(C.CUDNN_BACKEND_REDUCTION_DESCRIPTOR, name);
    setEnum(rd, C.CUDNN_ATTR_REDUCTION_COMP_TYPE, C.CUDNN_TYPE_DATA_TYPE, C.CUDNN_DATA_FLOAT, name);
    setEnum(rd, C.CUDNN_ATTR_REDUCTION_OPERATOR, C.CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, operator, name);
    finalize(rd, name);
    const op = this.d.create(C.CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, name);
    setDescs(op, C.CUDNN_ATTR_OPERATION_REDUCTION_DESC, [rd], name);
    setDescs(op, C.CUDNN_ATTR_OPERATION_REDUCTION_XDESC, [x.desc], name);
    setDescs(op, C.CUDNN_ATTR_OPERATION_REDUCTION_YDESC, [y.desc], name);
    finalize(op, name);
    this.ops.push(op);
    return y;
  }

  /** y = x seen with other dims/strides (a transpose view; no data moves). */
  reshape(name: string, x: TensorRef, y: TensorRef): TensorRef {
    const op = this.d.create(C.CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, name);
    setDescs(op, C.CUDNN_ATTR_OPERATION_RESHAPE_XDESC, [x.desc], name);
    setDescs(op, C.CUDNN_ATTR_OPERATION_RESHAPE_YDESC, [y.desc], name);
    finalize(op, name);
    this.ops.push(op);
    return y;
  }
}
