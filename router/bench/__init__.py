"""`fleet bench`: load generation, measurement and reports (docs/benchmarks/)."""
