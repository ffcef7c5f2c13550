"""Benchmarks: throughput, failover, adapter overhead. They use the service, never the reverse."""
