"""Losses and training loops shared by the adapted models."""
