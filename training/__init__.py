"""Training, data streaming and evaluation for the prompt-restoration models."""
