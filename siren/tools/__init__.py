"""Tools around the pipeline, not stages: the results tables, the benchmarks' helpers (latency,
FLOPs, peak memory), the GPU check, the tiny and real test models. No stage script imports them;
two stage-3 helpers borrow from them: grpo_verl reads the GPUs' size through gpu_check, and
grpo_memory's estimate for a named model shape uses latency's shapes."""
