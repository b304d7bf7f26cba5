"""Training: the learning-rate and checkpoint schedules, checkpoints, the loop and suites."""
