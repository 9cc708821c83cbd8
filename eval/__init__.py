"""Benchmark evaluation runners (LIBERO: `xr0-eval-libero`); the request builders are `xr0_client.benchmarks`."""
