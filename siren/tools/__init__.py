"""Tools around the pipeline: the results tables, benchmarks' helpers, the GPU check, the test and
demo models. No stage script or stage module imports them."""
