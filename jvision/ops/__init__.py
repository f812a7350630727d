"""Pure functions on arrays shared by model families (no state, shapes in docstrings)."""
