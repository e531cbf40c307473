"""Training: datasets from trajectories, SFT, DPO, online GRPO/PPO, export back to the backends."""
