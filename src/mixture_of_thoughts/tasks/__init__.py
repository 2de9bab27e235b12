"""Verifiable tasks that search over thoughts can be scored on (Game of 24)."""
