"""Support for tests, the demo and the benchmarks: a synthetic ABO download in the real layout, feature splits."""
