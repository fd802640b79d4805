"""Checkpoints: the coordinator that takes them, and their metadata."""
