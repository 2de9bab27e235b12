"""Corpus resolution and download, file checks, the character tokenizer, and seeded batches."""

from __future__ import annotations

import hashlib
import io
import os
import urllib.error
import urllib.request

import pytest
import torch

from mixture_of_thoughts.data import corpus
from mixture_of_thoughts.data.batches import TRAIN_FRACTION, CharDataset, get_batch
from mixture_of_thoughts.data.corpus import load_corpus, resolve_corpus
from mixture_of_thoughts.data.tokenizer import CharTokenizer
from mixture_of_thoughts.errors import CheckpointError, DataError

FAKE = b"FAKE CORPUS:\nA made-up line standing in for the downloaded file.\n" * 20
FAKE_SHA = hashlib.sha256(FAKE).hexdigest()
URL = "https://example.invalid/tinyshakespeare.txt"


# ----------------------------------------------------------------------------- resolve_corpus


@pytest.fixture
def named(monkeypatch, tmp_path):
    """Point ``shakespeare`` at fake content with a known checksum; no env dir, an empty cache."""
    monkeypatch.setitem(corpus.NAMED, "shakespeare", ("tinyshakespeare.txt", URL, FAKE_SHA))
    monkeypatch.delenv("MOT_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    calls = []

    def serve(payload):
        def urlopen(url, timeout=None):
            calls.append(url)
            return io.BytesIO(payload)
        monkeypatch.setattr(urllib.request, "urlopen", urlopen)

    def refuse(exc):
        def urlopen(url, timeout=None):
            calls.append(url)
            raise exc
        monkeypatch.setattr(urllib.request, "urlopen", urlopen)

    refuse(AssertionError("no download expected"))
    return {"cache": tmp_path / "xdg" / "mixture-of-thoughts", "calls": calls, "serve": serve, "refuse": refuse}


def test_cache_dir_follows_xdg(named):
    assert corpus.cache_dir() == named["cache"]


def test_mot_data_dir_comes_first(named, tmp_path, monkeypatch):
    env = tmp_path / "env"
    env.mkdir()
    (env / "tinyshakespeare.txt").write_bytes(b"from the env dir\n")
    named["cache"].mkdir(parents=True)
    (named["cache"] / "tinyshakespeare.txt").write_bytes(FAKE)  # a valid cache is not used
    monkeypatch.setenv("MOT_DATA_DIR", str(env))
    assert resolve_corpus("shakespeare") == env / "tinyshakespeare.txt"
    assert named["calls"] == []


def test_cache_used_when_env_dir_lacks_the_file(named, tmp_path, monkeypatch):
    monkeypatch.setenv("MOT_DATA_DIR", str(tmp_path))  # exists but holds no tinyshakespeare.txt
    named["cache"].mkdir(parents=True)
    (named["cache"] / "tinyshakespeare.txt").write_bytes(FAKE)
    assert resolve_corpus("shakespeare") == named["cache"] / "tinyshakespeare.txt"
    assert named["calls"] == []


def test_download_lands_in_cache_verified(named):
    named["serve"](FAKE)
    path = resolve_corpus("shakespeare")
    assert path == named["cache"] / "tinyshakespeare.txt"
    assert path.read_bytes() == FAKE
    assert named["calls"] == [URL]
    assert sorted(p.name for p in named["cache"].iterdir()) == ["tinyshakespeare.txt"]
    # a second call reads the cache and does not download again
    named["refuse"](AssertionError("no second download"))
    assert resolve_corpus("shakespeare") == path


def test_cached_file_with_wrong_checksum_is_downloaded_again(named):
    named["cache"].mkdir(parents=True)
    (named["cache"] / "tinyshakespeare.txt").write_bytes(b"tampered")
    named["serve"](FAKE)
    path = resolve_corpus("shakespeare")
    assert path.read_bytes() == FAKE and named["calls"] == [URL]


def _assert_how_to_fix(msg: str):
    assert URL in msg and "by hand" in msg and "MOT_DATA_DIR" in msg and "--data" in msg


def test_network_failure_gives_instructions_and_leaves_nothing(named):
    named["refuse"](urllib.error.URLError("no route to host"))
    with pytest.raises(DataError) as e:
        resolve_corpus("shakespeare")
    _assert_how_to_fix(str(e.value))
    assert "no route to host" in str(e.value)
    assert list(named["cache"].iterdir()) == []


def test_wrong_bytes_give_checksum_error_and_leave_nothing(named):
    named["serve"](b"<html>rate limited</html>")
    with pytest.raises(DataError, match="sha256") as e:
        resolve_corpus("shakespeare")
    _assert_how_to_fix(str(e.value))
    assert list(named["cache"].iterdir()) == []


def test_connection_dropped_midway_leaves_nothing(named, monkeypatch):
    class Dropping(io.BytesIO):
        def read(self, n=-1):
            if self.tell() > 0:
                raise ConnectionResetError("connection reset")
            return super().read(16)

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Dropping(FAKE))
    with pytest.raises(DataError, match="connection reset"):
        resolve_corpus("shakespeare")
    assert list(named["cache"].iterdir()) == []


def test_real_corpus_matches_pinned_checksum(shakespeare, monkeypatch):
    monkeypatch.setenv("MOT_DATA_DIR", str(shakespeare.parent))
    assert resolve_corpus("shakespeare") == shakespeare
    assert corpus._sha256(shakespeare) == corpus.SHAKESPEARE_SHA256
    assert load_corpus("shakespeare").startswith("First Citizen:")


# ----------------------------------------------------------------------------- file checks


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_corpus(tmp_path / "nope.txt")


def test_directory(tmp_path):
    with pytest.raises(DataError, match="not a regular file"):
        load_corpus(tmp_path)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        load_corpus(p)


def test_binary_file(tmp_path):
    p = tmp_path / "data.bin"
    p.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match="binary"):
        load_corpus(p)


def test_non_utf8_file(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("café olé\n".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8 \\(byte 3\\)"):
        load_corpus(p)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path):
    p = tmp_path / "secret.txt"
    p.write_text("hello\n", encoding="utf-8")
    p.chmod(0)
    try:
        with pytest.raises(DataError, match="cannot read"):
            load_corpus(p)
    finally:
        p.chmod(0o600)


def test_read_error_is_a_data_error(tmp_path, monkeypatch):
    """The same path as an unreadable file, for when the tests run as root (who can read anything)."""
    p = tmp_path / "secret.txt"
    p.write_text("hello\n", encoding="utf-8")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(p), "read_bytes", denied)
    with pytest.raises(DataError, match="cannot read data file .*: Permission denied$"):
        load_corpus(p)


def test_utf8_text_is_read(tmp_path):
    p = tmp_path / "ok.txt"
    p.write_text("naïve café\n", encoding="utf-8")
    assert load_corpus(p) == "naïve café\n"


def test_corpus_shorter_than_a_block():
    with pytest.raises(DataError, match="too short.*--block-size"):
        CharDataset("abcdefghij" * 10, block_size=16)  # validation split: 10 characters


def test_dataset_split_is_first_90_percent(corpus_text):
    ds = CharDataset(corpus_text, block_size=16)
    n = int(TRAIN_FRACTION * len(corpus_text))
    assert ds.tokenizer.decode(ds.train) == corpus_text[:n]
    assert ds.tokenizer.decode(ds.val) == corpus_text[n:]


def test_dataset_refuses_text_outside_a_given_vocabulary():
    with pytest.raises(DataError, match="'z' at 3"):
        CharDataset("abcz" * 100, block_size=4, tokenizer=CharTokenizer(list("abc")))


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip_and_sorted_vocab(corpus_text):
    tok = CharTokenizer.from_text(corpus_text)
    assert tok.chars == sorted(set(corpus_text)) and tok.vocab_size == 13
    ids = tok.encode(corpus_text)
    assert tok.decode(ids) == corpus_text
    assert tok.decode(torch.tensor(ids)) == corpus_text
    assert tok.encode("\n .a") == [0, 1, 2, 3]


def test_encode_tensor_is_encode_as_a_tensor():
    """The vectorised lookup the datasets use gives encode's ids for any vocabulary order, characters
    beyond the BMP included, and its error for characters outside the vocabulary."""
    tok = CharTokenizer(["z", "a", "\u00e9", "\U0001f600", "\n"])  # not in code-point order
    text = "a\u00e9\U0001f600z\nza"
    ids = tok.encode_tensor(text)
    assert ids.dtype == torch.long and ids.tolist() == tok.encode(text) == [1, 2, 3, 0, 4, 0, 1]
    assert tok.encode_tensor("").tolist() == []
    with pytest.raises(DataError, match="'b' at 1.*'c' at 2"):
        tok.encode_tensor("abc")
    big = CharTokenizer(list("ab "))
    with pytest.raises(DataError, match="'~' at 2"):
        big.encode_tensor("b ~")  # past the largest code point of the vocabulary


def test_unknown_characters_error_names_chars_and_positions():
    tok = CharTokenizer(list("ab "))
    with pytest.raises(DataError) as e:
        tok.encode("ab zq a!")
    msg = str(e.value)
    assert "'z' at 3" in msg and "'q' at 4" in msg and "'!' at 7" in msg and "--unknown-chars" in msg


def test_unknown_characters_error_is_capped():
    with pytest.raises(DataError, match="and 5 more"):
        CharTokenizer(list("a")).encode("x" * 15)


def test_unknown_skip_and_replace():
    tok = CharTokenizer(list("ab "))
    assert tok.decode(tok.encode("azb?", unknown="skip")) == "ab"
    assert tok.decode(tok.encode("azb?", unknown="replace")) == "a b "  # space is in the vocabulary
    assert tok.decode(tok.encode("azb?", unknown="replace", replacement="b")) == "abbb"
    no_space = CharTokenizer(list("xy"))
    assert no_space.decode(no_space.encode("xzy", unknown="replace")) == "xxy"  # first character
    with pytest.raises(DataError, match="replacement character 'q'"):
        tok.encode("az", unknown="replace", replacement="q")
    with pytest.raises(DataError, match="unknown-chars policy"):
        tok.encode("a", unknown="ignore")


@pytest.mark.parametrize("chars", [[], ["a", "a"], ["ab"]])
def test_bad_vocabularies(chars):
    with pytest.raises(DataError):
        CharTokenizer(chars)


def test_tokenizer_save_load(tmp_path):
    tok = CharTokenizer.from_text("héllo wörld\n")
    tok.save(tmp_path / "tokenizer.json")
    back = CharTokenizer.load(tmp_path / "tokenizer.json")
    assert back.chars == tok.chars and back.encode("wörld") == tok.encode("wörld")


@pytest.mark.parametrize("content", ["{broken", '{"type": "bpe", "chars": ["a"]}',
                                     '{"type": "char", "chars": ["a", "a"]}'])
def test_tokenizer_load_corrupt(tmp_path, content):
    p = tmp_path / "tokenizer.json"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(CheckpointError, match="missing or corrupt"):
        CharTokenizer.load(p)
    with pytest.raises(CheckpointError, match="missing or corrupt"):
        CharTokenizer.load(tmp_path / "absent.json")


# ----------------------------------------------------------------------------- batches


def test_batch_shapes_and_shift():
    data = torch.arange(100)
    x, y = get_batch(data, block_size=8, batch_size=5, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8) and x.dtype == y.dtype == torch.long
    # every row is a contiguous window, and y is x shifted by one
    assert torch.equal(x - x[:, :1], torch.arange(8).expand(5, 8))
    assert torch.equal(y, x + 1)
    assert int(y.max()) <= 99


def test_batch_of_a_split_exactly_one_block_long():
    x, y = get_batch(torch.arange(9), block_size=8, batch_size=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x, torch.arange(8).expand(3, 8)) and torch.equal(y, torch.arange(1, 9).expand(3, 8))


def test_same_seed_same_batch_and_different_seed_differs():
    data = torch.randint(0, 13, (2000,), generator=torch.Generator().manual_seed(0))
    a = get_batch(data, 16, 8, torch.Generator().manual_seed(42))
    b = get_batch(data, 16, 8, torch.Generator().manual_seed(42))
    c = get_batch(data, 16, 8, torch.Generator().manual_seed(43))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    g = torch.Generator().manual_seed(42)
    first, second = get_batch(data, 16, 8, g), get_batch(data, 16, 8, g)
    assert not torch.equal(first[0], second[0])  # the generator advances
