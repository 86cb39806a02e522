"""StyleCast processes: one sub-package per process, each runnable as `python -m services.<name>`."""
