"""Finding and reading the training text.

``--data`` is either a path to a UTF-8 text file or the name ``shakespeare``. The name resolves,
in order, to ``$MOT_DATA_DIR/tinyshakespeare.txt``, the user cache
(``~/.cache/mixture-of-thoughts/``, or ``$XDG_CACHE_HOME``), then a download from the address that
nanoGPT's ``data/shakespeare_char/prepare.py`` uses, verified against a pinned sha256. A download
is written to a temporary file and renamed only once verified, so the cache never holds a partial
or wrong file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from pathlib import Path

from ..errors import DataError

log = logging.getLogger(__name__)

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_FILE = "tinyshakespeare.txt"
NAMED = {"shakespeare": (SHAKESPEARE_FILE, SHAKESPEARE_URL, SHAKESPEARE_SHA256)}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mixture-of-thoughts"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, sha256: str, dest: Path, timeout: float = 30.0) -> None:
    """Download ``url`` to ``dest`` atomically, verifying ``sha256``; nothing partial is left."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    how = (f"download it by hand from {url} and either put it at {dest} or set MOT_DATA_DIR to the "
           f"folder holding {dest.name} (sha256 {sha256}), or pass --data PATH to any text file")
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        got = _sha256(Path(tmp))
        if got != sha256:
            raise DataError(f"downloaded {url} but its sha256 is {got}, expected {sha256}; {how}")
        os.replace(tmp, dest)
    except DataError:
        raise
    except Exception as e:  # network errors of every kind
        raise DataError(f"could not download {url} ({e}); {how}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def resolve_corpus(data: str | os.PathLike) -> Path:
    """The path of the corpus ``data`` names (a file path or ``"shakespeare"``), downloading if needed."""
    name = str(data)
    if name in NAMED:
        fname, url, sha = NAMED[name]
        env = os.environ.get("MOT_DATA_DIR")
        if env and (Path(env) / fname).is_file():
            return Path(env) / fname
        cached = cache_dir() / fname
        if cached.is_file():
            if _sha256(cached) == sha:
                return cached
            log.warning("cached %s has the wrong checksum; downloading it again", cached)
            cached.unlink()
        log.info("downloading %s to %s", url, cached)
        _download(url, sha, cached)
        return cached
    path = Path(name).expanduser()
    if not path.exists():
        raise DataError(f"data file {path} does not exist; pass a path to a UTF-8 text file or "
                        f"one of the names {sorted(NAMED)}")
    if not path.is_file():
        raise DataError(f"data path {path} is not a regular file; pass a UTF-8 text file")
    return path


def load_corpus(data: str | os.PathLike) -> str:
    """Read the corpus ``data`` names as text, refusing empty, binary or non-UTF-8 files."""
    path = resolve_corpus(data)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read data file {path}: {e.strerror or e}") from None
    if not raw:
        raise DataError(f"data file {path} is empty; give a text file with some content")
    if b"\x00" in raw[:65536]:
        raise DataError(f"data file {path} looks binary (it holds NUL bytes); give a UTF-8 text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"data file {path} is not valid UTF-8 (byte {e.start}): give a UTF-8 text file") from None
