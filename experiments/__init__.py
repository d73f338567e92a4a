"""The wiring layer: turns parsed settings into runs (training, evaluation, the benchmark harness)."""
