"""Architectures (registry), training and checkpoints."""
