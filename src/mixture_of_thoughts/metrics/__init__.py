"""Metrics: quality (bits per character) and diversity of generated text."""
