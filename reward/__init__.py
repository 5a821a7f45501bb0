"""Stage 3, the reward model: training (``train``), preference and ranking data (``data``), the losses and the
held-out evaluation."""
