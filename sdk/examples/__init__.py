"""Small real models on real data (scikit-learn's digits) for the quick start, the tests and the benchmarks."""
