"""The trainer: the jitted step, the stages, the loop, checkpoints and data parallelism."""
