"""moe-pipeline training package: Hydra entry points, engine, checkpoints, metrics."""
