export * from "./cost.ts";
export * from "./estimator.ts";
export * from "./offload.ts";
export * from "./policy.ts";
export * from "./store.ts";
export * from "./working-set.ts";
