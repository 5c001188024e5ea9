export {
  LLAMA_PRESETS,
  type Llama3RopeScaling,
  type LlamaConfig,
  LlamaConfigError,
  type LlamaConfigInput,
  type LlamaParamCount,
  type LlamaPresetName,
  llamaParamCount,
  llamaPreset,
  makeLlamaConfig,
  type RopeScaling,
} from "./config.ts";
export * from "./hf-config.ts";
export * from "./interfaces.ts";
export * from "./layer.ts";
export * from "./model.ts";
export * from "./ops/index.ts";
export * from "./parallelize.ts";
export * from "./weights.ts";
