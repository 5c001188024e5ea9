export * from "./block.ts";
export * from "./cuda.ts";
export * from "./distattn.ts";
export * from "./layout.ts";
export * from "./merge.ts";
export * from "./placement.ts";
export * from "./reference.ts";
export * from "./schedule.ts";
