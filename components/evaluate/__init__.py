"""Evaluate: test-set metrics of one candidate through its serving signature."""
