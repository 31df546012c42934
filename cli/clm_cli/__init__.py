"""The `clm` command: run the platform locally and operate it."""
