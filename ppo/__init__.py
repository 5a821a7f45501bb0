"""Stage 4, PPO: the loop (``train``), its math (``algorithm``, ``shaping``), rollouts, models, rewards, prompt order,
checkpoints and settings."""
