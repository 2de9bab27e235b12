"""Pretrained models (DESIGN §6): graft MoT layers into Hugging Face causal LMs, control the experts
of MoE models, and estimate the cost of retraining versus grafting.

Submodules:

* ``graft``: sparse upcycling of GPT-2 / Llama / Mistral / Qwen2 MLPs into thought layers; save/load.
* ``finetune``: train only the thought parameters of a grafted model.
* ``generate``: batched, per-branch reproducible sampling; ``think_hf`` for grafted models.
* ``specialise``: expert activation rates on two prompt sets, heatmap, branches with expert profiles
  (through :mod:`mixture_of_thoughts.steering.experts`, the ``ExpertController`` that records /
  forces / bans / steers the experts of HF MoE models and of this package's MoT layers).
* ``cost``: compute and price of full training versus grafting (pure arithmetic).

``transformers`` is imported only inside these modules, and only by the functions that need it; a
missing install raises :class:`~mixture_of_thoughts.hf._compat.MissingDependency` saying
``pip install 'mixture-of-thoughts[hf]'``. Nothing is imported here, so ``hf.cost`` stays light.
"""
