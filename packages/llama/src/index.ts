export * from "./config.ts";
export * from "./interfaces.ts";
export * from "./layer.ts";
export * from "./model.ts";
export * from "./ops/index.ts";
export * from "./parallelize.ts";
export * from "./weights.ts";
