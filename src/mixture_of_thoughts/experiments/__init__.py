"""Experiments: MoT against the dense baseline, with statistics and a written report."""
