"""The trainer: the jitted step, the stages, the loop, checkpoints and data parallelism."""

__all__ = ["checkpoint", "clock", "loop", "parallel", "run_axis", "scoring", "stages", "step",
           "variants"]
