"""The library: arrays and paths in, results out. No Typer, no MLflow, no project paths."""
