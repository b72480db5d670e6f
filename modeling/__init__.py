"""Prompt-learning all-in-one image restoration models as transformers models."""
