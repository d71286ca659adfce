"""Fixtures for tests and benchmarks, kept out of the shipped service: throwaway servers and free
ports (`ops.support.servers`), and a synthetic frame store computed on demand (`ops.support.synthetic`)."""
