"""Device simulators that feed the edge gateway realistic sensor traffic in tests and benchmarks."""
