"""Steering the experts of mixture-of-experts layers, whoever built them.

* ``experts``: ``ExpertController`` — record / force / ban / shift (SteerMoE) the routing of Hugging
  Face MoE models (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, GPT-OSS) and of this package's own
  Mixture-of-Thoughts layers, per batch row, through hooks removed on exit; ``ExpertProfile``.

It needs torch only (never ``transformers``); nothing is imported here.
"""
