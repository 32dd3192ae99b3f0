"""Simulated peers for tests and benchmarks (BMCs speaking RMCP+/IPMI 2.0)."""
