export * from "./estimator.ts";
export * from "./policy.ts";
