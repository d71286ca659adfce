"""Benchmarks: the scoring heads, the stores, the whole service (`glccl bench ...`), and `gpu_check`."""
