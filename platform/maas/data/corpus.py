"""Unlabelled English text that ships with installed packages: their documentation.

No data set can be downloaded at run time, yet distilling and evaluating a sentence encoder needs real
English sentences. Every installed distribution carries its long description (README) in its metadata, and
its modules carry docstrings; together they give tens of thousands of technical English sentences. The
corpus is deterministic for a given environment (sorted sources, stable filters), fingerprinted like any
other data set, and split by content hash so the same sentence always lands in the same split.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import random
import re
from dataclasses import dataclass
from typing import Iterable, Optional

from maas.exceptions import DataError

_MARKUP = [
    (re.compile(r"```.*?```", re.S), " "),                       # fenced code
    (re.compile(r"`([^`]*)`"), r"\1"),                            # inline code
    (re.compile(r"!?\[([^\]]*)\]\([^)]*\)"), r"\1"),              # markdown links and images
    (re.compile(r"<[^>]+>"), " "),                                # html tags
    (re.compile(r"https?://\S+"), " "),                           # bare urls
    (re.compile(r":[a-z]+:`([^`]*)`"), r"\1"),                    # rst roles
    (re.compile(r"[*_#>|=~^-]{2,}"), " "),                        # rules, emphasis runs, tables
]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_WORD = re.compile(r"[A-Za-z]+")


def _clean(text: str) -> str:
    for pattern, repl in _MARKUP:
        text = pattern.sub(repl, text)
    return text


def _sentences(text: str) -> Iterable[str]:
    for para in re.split(r"\n\s*\n", _clean(text)):
        lines = [ln.strip() for ln in para.splitlines()]
        if any(ln.startswith((">>>", "$ ", "pip ", "import ", "from ", "...")) for ln in lines):
            continue  # code samples
        for sent in _SENTENCE_END.split(" ".join(lines)):
            sent = " ".join(sent.replace("*", "").split())
            yield sent


def is_english_sentence(sent: str, min_chars: int = 40, max_chars: int = 300) -> bool:
    """Prose, not code or tables: long enough, mostly words, ends like a sentence."""
    if not (min_chars <= len(sent) <= max_chars) or sent[-1] not in ".!?" or not sent[0].isupper():
        return False
    words = _WORD.findall(sent)
    letters = sum(len(w) for w in words)
    return len(words) >= 6 and letters / len(sent) > 0.7 and not any(c in sent for c in "{}=;\\")


def _distinct_english(texts: Iterable[str], out: list, seen: set, limit: Optional[int]) -> list[str]:
    """Append to ``out`` each English sentence of ``texts`` not ``seen`` yet (case-insensitive), up to ``limit``."""
    for text in texts:
        for sent in _sentences(text):
            key = sent.lower()
            if key not in seen and is_english_sentence(sent):
                seen.add(key)
                out.append(sent)
                if limit is not None and len(out) >= limit:
                    return out
    return out


def _descriptions(packages: Optional[list[str]] = None) -> Iterable[str]:
    """The long description (README) of each installed distribution, in sorted name order."""
    dists = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower()
        if name and name not in dists and (packages is None or name in packages):
            dists[name] = dist
    for name in sorted(dists):
        meta = dists[name].metadata
        yield str(meta.get_payload() or meta.get("Description") or "")


DOC_PACKAGES = ("numpy", "scipy", "sklearn", "pandas")  # installed with maas; ~30k docstring sentences


def _source_files(packages: Optional[tuple]) -> list:
    import importlib.util
    import sysconfig
    from pathlib import Path

    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py")) + sorted(root.glob("[a-z]*/*.py"))
    for name in packages or ():
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            files += sorted(Path(list(spec.submodule_search_locations)[0]).rglob("*.py"))
    return [f for f in files if not any(part.startswith("test") or part == "tests" for part in f.parts[-3:])]


def _docstrings(packages: Optional[tuple]) -> Iterable[str]:
    """Every module, class and function docstring of the standard library and ``packages``, read with
    ``ast`` from the source files (nothing is imported or run), in sorted file order."""
    import ast

    for path in _source_files(packages):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                yield ast.get_docstring(node) or ""


def package_topics(packages: tuple = ("numpy", "scipy", "sklearn", "pandas"), per_package: int = 2000
                   ) -> list[tuple[str, str]]:
    """(sentence, package) pairs: up to ``per_package`` distinct docstring sentences of each package (its
    own source only, no standard library), for a real text classification task that ships with maas.
    Sentences found in more than one package are left out (their label would be ambiguous)."""
    per: dict = {}
    for name in packages:
        files = [f for f in _source_files((name,)) if name in f.parts]
        texts = []
        for path in files:
            try:
                import ast

                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, OSError):
                continue
            texts += [ast.get_docstring(n) or "" for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        per[name] = _distinct_english(texts, [], set(), None)
    counts: dict = {}
    for sents in per.values():
        for s in sents:
            counts[s.lower()] = counts.get(s.lower(), 0) + 1
    out = []
    for name, sents in per.items():
        unique = [s for s in sents if counts[s.lower()] == 1]
        out += [(s, name) for s in unique[::max(1, len(unique) // per_package)][:per_package]]  # spread over files
    return out


def english_corpus(limit: Optional[int] = None, packages: Optional[tuple] = DOC_PACKAGES) -> list[str]:
    """Package descriptions, then docstrings (standard library, then ``packages``): distinct sentences in
    a stable order."""
    out: list[str] = []
    seen: set = set()
    _distinct_english(_descriptions(), out, seen, limit)
    if limit is None or len(out) < limit:
        _distinct_english(_docstrings(packages), out, seen, limit)
    return out


def split_of(sentence: str, held_out_fraction: float, seed: int = 0) -> str:
    """'train' or 'test' by a seeded content hash: stable across runs and machines."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{sentence}".encode()).digest()[:8], "big") / 2**64
    return "test" if h < held_out_fraction else "train"


def fingerprint(sentences: list[str]) -> str:
    digest = hashlib.sha256()
    for s in sentences:
        digest.update(s.encode())
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass
class Corpus:
    """An encoder run's sentences: train (distillation), val, held out (every variant measured on them)."""

    train: list
    val: list
    held_out: list
    fingerprint: str
    total: int


def load_corpus(d) -> Corpus:
    """The sentences of ``d`` (an encoder spec's ``data``), split by seeded content hash into train / val /
    held-out."""
    sentences = english_corpus(d.limit, tuple(d.packages))
    need = d.held_out + d.val
    if len(sentences) < need + 100:
        raise DataError(f"the corpus has {len(sentences)} sentences; data.held_out + data.val = {need} "
                               "leaves too few to train on: lower them or raise data.limit")
    fraction = min(0.5, 1.3 * need / len(sentences))
    test = [s for s in sentences if split_of(s, fraction, d.seed) == "test"]
    train = [s for s in sentences if split_of(s, fraction, d.seed) == "train"]
    if len(test) < need:  # hash split came up short: top up from the end of train (still disjoint)
        test, train = test + train[-(need - len(test)):], train[:-(need - len(test))]
    random.Random(d.seed).shuffle(train)  # sources come in sorted order; a step's max_sentences takes a mix
    return Corpus(train=train, val=test[d.held_out:need], held_out=test[:d.held_out],
                  fingerprint=fingerprint(sentences), total=len(sentences))
