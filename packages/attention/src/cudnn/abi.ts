// Every cuDNN enum value the backend passes to the library (graph.ts, plans.ts, sdpa.ts), with its name
// in the headers, and the checker that compares this table with the real headers. Source: cudnn_graph.h
// of cuDNN 9 (included by cudnn.h; cudnn_backend.h is a shim over it). The attribute names carry
// explicit values in the header; descriptor and attribute *types* are sequential enums that cuDNN 9 only
// appends to. Checked: abi.c (beside this file) compiled against the cuDNN 9.6.0 headers prints exactly
// this table (the three numerical-note entries, added for the deterministic backward, are not yet: they
// were read from cuDNN 9 header transcriptions); on a GPU machine bench/cudnn-check.ts runs
// checkCudnnAbi on abi.c's output against that machine's headers before anything else.

export const CUDNN_ABI = Object.freeze({
  CUDNN_STATUS_SUCCESS: 0,
  // cudnnDataType_t
  CUDNN_DATA_FLOAT: 0,
  CUDNN_DATA_INT32: 4,
  CUDNN_DATA_BFLOAT16: 9,
  CUDNN_DATA_BOOLEAN: 11,
  // cudnnBackendDescriptorType_t
  CUDNN_BACKEND_POINTWISE_DESCRIPTOR: 0,
  CUDNN_BACKEND_ENGINE_DESCRIPTOR: 2,
  CUDNN_BACKEND_ENGINECFG_DESCRIPTOR: 3,
  CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR: 4,
  CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR: 5,
  CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR: 13,
  CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR: 15,
  CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR: 16,
  CUDNN_BACKEND_TENSOR_DESCRIPTOR: 17,
  CUDNN_BACKEND_MATMUL_DESCRIPTOR: 18,
  CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR: 19,
  CUDNN_BACKEND_REDUCTION_DESCRIPTOR: 21,
  CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR: 22,
  CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR: 31,
  // cudnnBackendAttributeType_t
  CUDNN_TYPE_HANDLE: 0,
  CUDNN_TYPE_DATA_TYPE: 1,
  CUDNN_TYPE_BOOLEAN: 2,
  CUDNN_TYPE_INT64: 3,
  CUDNN_TYPE_FLOAT: 4,
  CUDNN_TYPE_VOID_PTR: 6,
  CUDNN_TYPE_HEUR_MODE: 8,
  CUDNN_TYPE_NUMERICAL_NOTE: 11,
  CUDNN_TYPE_POINTWISE_MODE: 14,
  CUDNN_TYPE_BACKEND_DESCRIPTOR: 15,
  CUDNN_TYPE_REDUCTION_OPERATOR_TYPE: 18,
  // cudnnBackendAttributeName_t
  CUDNN_ATTR_POINTWISE_MODE: 0,
  CUDNN_ATTR_POINTWISE_MATH_PREC: 1,
  CUDNN_ATTR_POINTWISE_AXIS: 9,
  CUDNN_ATTR_ENGINEHEUR_MODE: 200,
  CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH: 201,
  CUDNN_ATTR_ENGINEHEUR_RESULTS: 202,
  CUDNN_ATTR_ENGINECFG_ENGINE: 300,
  CUDNN_ATTR_EXECUTION_PLAN_HANDLE: 400,
  CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG: 401,
  CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE: 402,
  CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR: 750,
  CUDNN_ATTR_OPERATION_POINTWISE_XDESC: 751,
  CUDNN_ATTR_OPERATION_POINTWISE_BDESC: 752,
  CUDNN_ATTR_OPERATION_POINTWISE_YDESC: 753,
  CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1: 754,
  CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2: 755,
  CUDNN_ATTR_OPERATION_POINTWISE_TDESC: 758,
  CUDNN_ATTR_OPERATIONGRAPH_HANDLE: 800,
  CUDNN_ATTR_OPERATIONGRAPH_OPS: 801,
  CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT: 900,
  CUDNN_ATTR_TENSOR_DATA_TYPE: 901,
  CUDNN_ATTR_TENSOR_DIMENSIONS: 902,
  CUDNN_ATTR_TENSOR_STRIDES: 903,
  CUDNN_ATTR_TENSOR_UNIQUE_ID: 906,
  CUDNN_ATTR_TENSOR_IS_VIRTUAL: 907,
  CUDNN_ATTR_TENSOR_IS_BY_VALUE: 908,
  CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS: 1000,
  CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS: 1001,
  CUDNN_ATTR_VARIANT_PACK_WORKSPACE: 1003,
  CUDNN_ATTR_ENGINE_GLOBAL_INDEX: 1301,
  CUDNN_ATTR_ENGINE_NUMERICAL_NOTE: 1303,
  CUDNN_ATTR_MATMUL_COMP_TYPE: 1500,
  CUDNN_ATTR_OPERATION_MATMUL_ADESC: 1520,
  CUDNN_ATTR_OPERATION_MATMUL_BDESC: 1521,
  CUDNN_ATTR_OPERATION_MATMUL_CDESC: 1522,
  CUDNN_ATTR_OPERATION_MATMUL_DESC: 1523,
  CUDNN_ATTR_REDUCTION_OPERATOR: 1600,
  CUDNN_ATTR_REDUCTION_COMP_TYPE: 1601,
  CUDNN_ATTR_OPERATION_REDUCTION_XDESC: 1610,
  CUDNN_ATTR_OPERATION_REDUCTION_YDESC: 1611,
  CUDNN_ATTR_OPERATION_REDUCTION_DESC: 1612,
  CUDNN_ATTR_OPERATION_RESHAPE_XDESC: 2200,
  CUDNN_ATTR_OPERATION_RESHAPE_YDESC: 2201,
  // cudnnPointwiseMode_t
  CUDNN_POINTWISE_ADD: 0,
  CUDNN_POINTWISE_MUL: 1,
  CUDNN_POINTWISE_DIV: 6,
  CUDNN_POINTWISE_SUB: 9,
  CUDNN_POINTWISE_EXP: 13,
  CUDNN_POINTWISE_LOG: 15,
  CUDNN_POINTWISE_IDENTITY: 21,
  CUDNN_POINTWISE_CMP_GE: 303,
  CUDNN_POINTWISE_GEN_INDEX: 501,
  CUDNN_POINTWISE_BINARY_SELECT: 601,
  // cudnnReduceTensorOp_t
  CUDNN_REDUCE_TENSOR_ADD: 0,
  CUDNN_REDUCE_TENSOR_MAX: 3,
  // cudnnBackendHeurMode_t
  CUDNN_HEUR_MODE_FALLBACK: 2,
  CUDNN_HEUR_MODE_A: 3,
  // cudnnBackendNumericalNote_t
  CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC: 4,
} as const);

export interface AbiCheck {
  /** The header comments of abi.c's output (the cuDNN version it was compiled against). */
  headers: string[];
  /** One line per difference: a value that differs, or a name missing on either side. */
  diffs: string[];
}

/** CUDNN_ABI against abi.c's output (NAME=value lines, # comments); throws on a line it cannot read. */
export function checkCudnnAbi(text: string, source = "abi.c output"): AbiCheck {
  const header: Record<string, number> = {};
  const headers: string[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line.startsWith("#")) headers.push(line.slice(1).trim());
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([A-Z0-9_]+)=(-?\d+)$/.exec(line);
    if (!m) throw new Error(`cudnn ABI: cannot read line ${JSON.stringify(line)} of ${source}`);
    header[m[1] as string] = Number(m[2]);
  }
  const ours = CUDNN_ABI as Readonly<Record<string, number>>;
  const diffs: string[] = [];
  for (const [name, value] of Object.entries(ours)) {
    if (!(name in header)) diffs.push(`${name}: CUDNN_ABI ${value}, not printed by abi.c`);
    else if (header[name] !== value) diffs.push(`${name}: CUDNN_ABI ${value}, headers ${header[name]}`);
  }
  for (const name of Object.keys(header)) if (!(name in ours)) diffs.push(`${name}: headers ${header[name]}, not in CUDNN_ABI`);
  return { headers, diffs };
}
