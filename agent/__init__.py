"""The agent's pieces beside the top-level model files: the training step, the distributions, the CPU forms of a
few operations, and evaluation (episodes and dreams)."""
