"""Running a search: trial settings, preflight checks, the cluster, the Tune tuner."""
