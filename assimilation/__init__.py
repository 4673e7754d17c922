"""Ensemble Kalman filters as pure JAX functions (no biogeochemistry, no I/O)."""
