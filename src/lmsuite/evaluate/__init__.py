"""Evaluation across checkpoints: LAMBADA-style, perplexity, probes, lm-eval bridge."""
