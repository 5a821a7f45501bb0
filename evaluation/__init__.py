"""The evaluation, the last stage: every policy of the run (SFT, PPO and its snapshots, DPO, best-of-n from SFT) on
held-out prompts (``evaluate``), and best-of-n's picks, KL and the frontier plot (``best_of_n``)."""
