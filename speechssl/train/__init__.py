"""Pretraining: the trainer loop, data pipeline, checkpoints, distributed setup, schedules,
logging and plots, driven by the `speechssl-train` Hydra app."""
