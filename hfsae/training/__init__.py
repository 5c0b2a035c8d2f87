"""Training TopK SAEs: losses, dead-latent statistics, EMA, checkpoints and the trainer."""
