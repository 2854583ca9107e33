"""Performance and quality benchmarks (``make bench``); not part of the test suite."""
