"""Training: sequence batches, losses, the loop with early stopping and checkpoints."""
