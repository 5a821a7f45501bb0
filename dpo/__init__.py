"""DPO on the same labels as PPO, from the SFT policy (``train``): the evaluation puts it beside PPO and best-of-n."""
