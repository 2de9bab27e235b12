"""Mixture of Thoughts."""
