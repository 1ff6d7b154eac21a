"""`routecheck report`: per-cohort comparison of candidate routes with the baseline."""
