"""Shared fixtures: a tiny generated corpus, a tiny model config, and a cached tiny training run.

Nothing here needs the network or the real corpus; the ``shakespeare`` fixture skips unless
``MOT_DATA_DIR`` holds ``tinyshakespeare.txt``. Library modules are imported inside the fixtures so
that the config and data tests still collect while other parts of the package are being written.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest
import torch

# A small alphabet: 13 distinct characters including space, '.' and newline.
WORDS = ["the", "cat", "sat", "on", "a", "red", "dot", "and", "ate", "tea", "ten", "rats", "cod", "nest"]
TINY_BLOCK = 16

# The test models are tiny: intra-op threads only add synchronisation, which costs milliseconds per
# op when the cores are busy (measured: 8 ms vs 0.01 ms for a 32-wide linear layer on a loaded 2-core box).
torch.set_num_threads(1)


def make_text(seed: int = 0, n_sentences: int = 300) -> str:
    """Pseudo-sentences of 3-8 words from a seeded Python RNG (about 7 KB for 300 sentences)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
        lines.append(" ".join(words) + ".")
    return "\n".join(lines) + "\n"


def tiny_model_config(**changes):
    from mixture_of_thoughts.config import ModelConfig

    kw = dict(vocab_size=13, block_size=TINY_BLOCK, n_layer=2, n_head=2, n_embd=32)
    kw.update(changes)
    return ModelConfig(**kw)


def tiny_train_config(**changes):
    from mixture_of_thoughts.config import TrainConfig

    kw = dict(batch_size=4, max_steps=6, lr=3e-3, min_lr=3e-4, warmup_steps=2, eval_interval=1,
              eval_batches=2, seed=0)
    kw.update(changes)
    return TrainConfig(**kw)


def train_tiny(data, out, *, model=None, **train_changes):
    """Train the tiny config on ``data`` into ``out`` on the CPU; returns the ``TrainResult``."""
    from mixture_of_thoughts.training.trainer import train

    return train(str(data), out, model or tiny_model_config(), tiny_train_config(**train_changes), device="cpu")


@pytest.fixture(scope="session")
def corpus_text() -> str:
    return make_text()


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory, corpus_text) -> Path:
    """The tiny corpus written to a session temp file (tests must not modify it)."""
    p = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    p.write_text(corpus_text, encoding="utf-8")
    return p


@pytest.fixture
def tiny_config():
    """A fresh tiny ModelConfig (2 layers, 2 heads, width 32, block 16, vocabulary 13)."""
    return tiny_model_config()


@pytest.fixture
def tokenizer(corpus_text):
    from mixture_of_thoughts.data.tokenizer import CharTokenizer

    return CharTokenizer.from_text(corpus_text)


@pytest.fixture
def tiny_model(tokenizer):
    """An untrained tiny dense model over the corpus vocabulary, seeded, in eval mode."""
    from mixture_of_thoughts.models.transformer import Transformer

    cfg = tiny_model_config(vocab_size=tokenizer.vocab_size)
    return Transformer(cfg).init_weights(torch.Generator().manual_seed(0)).eval()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, corpus_file) -> Path:
    """A tiny run trained once per session (40 steps, evaluated every 10). Copy it before changing it."""
    out = tmp_path_factory.mktemp("tiny_run") / "run"
    train_tiny(corpus_file, out, max_steps=40, eval_interval=10)
    return out


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the session's tiny run that a test may damage."""
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst


@pytest.fixture
def shakespeare() -> Path:
    """The real tinyshakespeare corpus from ``MOT_DATA_DIR``; skips when it is not there."""
    d = os.environ.get("MOT_DATA_DIR")
    if not d or not (Path(d) / "tinyshakespeare.txt").is_file():
        pytest.skip("MOT_DATA_DIR does not hold tinyshakespeare.txt")
    return Path(d) / "tinyshakespeare.txt"


# --- Hugging Face: a character tokenizer and tiny random causal LMs, built offline ------------------

HF_CHARS = list("abcdefghijklmnopqrstuvwxyz .,\n")


@pytest.fixture(scope="session")
def make_hf_char_tokenizer():
    """Factory ``make(merges=())``: a character-level HF fast tokenizer (BPE), no download.

    Ids: ``<eos>`` = 0 (also its EOS token), then the characters of ``HF_CHARS`` from 1; each merge
    ``("t", "h")`` adds the merged token (``"th"``) after them, in order.
    """
    pytest.importorskip("transformers")

    def make(merges=()):
        from tokenizers import Tokenizer, decoders, models
        from transformers import PreTrainedTokenizerFast

        vocab = {"<eos>": 0, **{c: i + 1 for i, c in enumerate(HF_CHARS)}}
        for a, b in merges:
            vocab[a + b] = len(vocab)
        tk = Tokenizer(models.BPE(vocab=vocab, merges=list(merges), unk_token=None))
        tk.decoder = decoders.Fuse()
        return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>")

    return make


@pytest.fixture
def hf_tokenizer(make_hf_char_tokenizer):
    """The character tokenizer without merges (31 tokens, ``<eos>`` = 0)."""
    return make_hf_char_tokenizer()


@pytest.fixture(scope="session")
def make_tiny_llama():
    """Factory ``make(vocab_size, seed=0)``: a fresh random Llama (2 layers, width 32), eval mode, EOS id 0."""
    pytest.importorskip("transformers")

    def make(vocab_size: int, seed: int = 0):
        import transformers as tf

        torch.manual_seed(seed)  # transformers initialises from the global RNG
        cfg = tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=128,
                             bos_token_id=0, eos_token_id=0, pad_token_id=0)
        return tf.LlamaForCausalLM(cfg).eval()

    return make


@pytest.fixture(scope="session")
def save_hf_dir(tmp_path_factory):
    """Factory ``save(model, tokenizer, name="tiny_llama")``: both saved to a fresh temp directory, which
    ``--model DIR`` and ``load_pretrained`` read like any Hugging Face model directory."""

    def save(model, tokenizer, name: str = "tiny_llama"):
        d = tmp_path_factory.mktemp(name)
        model.save_pretrained(d)
        tokenizer.save_pretrained(d)
        return d

    return save
