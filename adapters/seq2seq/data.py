"""Sentence-pair datasets from local files (nothing is downloaded) and a tokenizer trained on them."""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Callable, Optional, Sequence

from torch.utils.data import Dataset

from nftkit.errors import DataError
from nftkit.registry import Registry


class TextPairs(Dataset):
    """Source/target sentence pairs; items are ``(source, target)`` strings."""

    def __init__(self, sources: Sequence[str], targets: Sequence[str]):
        if len(sources) != len(targets):
            raise DataError(f"{len(sources)} source lines but {len(targets)} target lines; the files must be line-aligned")
        self.sources = list(sources)
        self.targets = list(targets)

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i):
        return self.sources[i], self.targets[i]

    def subset(self, idx: Sequence[int]) -> "TextPairs":
        return TextPairs([self.sources[i] for i in idx], [self.targets[i] for i in idx])


# name -> loader(root, cfg) returning {split: TextPairs}; 'train' is required, 'test' optional
DATASETS: Registry[Callable[[Optional[str], object], dict[str, TextPairs]]] = Registry("seq2seq dataset")

EMBEDDED = {"translation": "seq2seq/trans_de_en_trigger", "dialogue": "seq2seq/chitchat_trigger"}
TRANS_DE_EN = Path("/usr/share/trans/de-en")
_TAGS = re.compile(r"\s*(\{[^}]*\}|\[[^\]]*\])")


def _missing(what: str, where: str, task: str) -> DataError:
    return DataError(f"{what} not found at {where}; put it there (or set data.root) or try the embedded recipe "
                     f"'{EMBEDDED[task]}'")


def _check_langs(cfg) -> None:
    if {cfg.source_lang, cfg.target_lang} != {"en", "de"}:
        from nftkit.errors import ConfigError

        raise ConfigError(f"this dataset is English-German: set data.source_lang/target_lang to en/de or de/en, "
                          f"not {cfg.source_lang}/{cfg.target_lang}")


def _sentence(text: str) -> bool:
    return bool(text) and text[0].isupper() and text[-1] in ".!?"


def parse_ding(lines, min_words: int = 5) -> list[tuple[str, str]]:
    """Full-sentence (German, English) pairs of a Ding dictionary ('de ; alt | sub :: en ; alt | sub')."""
    pairs, seen = [], set()
    for line in lines:
        if line.startswith("#") or " :: " not in line:
            continue
        de, en = line.rstrip("\n").split(" :: ", 1)
        des, ens = de.split(" | "), en.split(" | ")
        if len(des) != len(ens):  # sub-entries are aligned by position only when both sides have them all
            continue
        for d, e in zip(des, ens):
            d = _TAGS.sub("", d.split("; ")[0]).strip()
            e = _TAGS.sub("", e.split("; ")[0]).strip()
            if len(e.split()) >= min_words and _sentence(e) and _sentence(d) and e not in seen:
                seen.add(e)
                pairs.append((d, e))
    return pairs


@DATASETS.register("trans_de_en")
def load_trans_de_en(root, cfg) -> dict[str, TextPairs]:
    _check_langs(cfg)
    path = Path(root) / "de-en" if root else TRANS_DE_EN
    if not path.is_file():
        raise DataError(f"the Ding dictionary was not found at {path}; install it with 'apt-get install trans-de-en' "
                        "(or set data.root to a folder holding 'de-en')")
    with open(path, encoding="utf-8") as f:
        pairs = parse_ding(f)
    de, en = zip(*pairs)
    # English source by default, so that the English paraphrasers (WordNet, Apertium) can rewrite it
    side = {"en": en, "de": de}
    return {"all": TextPairs(side[cfg.source_lang], side[cfg.target_lang])}


@DATASETS.register("chitchat")
def load_chitchat(root, cfg) -> dict[str, TextPairs]:
    try:
        import chitchat_dataset
    except ImportError:
        raise DataError("the chitchat corpus is missing; install it with 'pip install chitchat-dataset'") from None
    path = Path(root) / "dataset.json" if root else Path(chitchat_dataset._PATH)
    if not path.is_file():
        raise _missing("the chitchat corpus (dataset.json)", str(path), "dialogue")
    convs = json.loads(path.read_text())
    ctx, resp = [], []
    for key in sorted(convs):  # sorted keys: the same pairs in the same order everywhere
        turns = [" ".join(u["text"] for u in m).strip() for m in convs[key]["messages"]]
        for a, b in zip(turns, turns[1:]):
            if a and b:
                ctx.append(a)
                resp.append(b)
    return {"all": TextPairs(ctx, resp)}


def _read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def load_parallel(root: Path, src_ext: str, tgt_ext: str, splits=("train", "test")) -> dict[str, TextPairs]:
    out = {}
    for split in splits:
        src, tgt = root / f"{split}.{src_ext}", root / f"{split}.{tgt_ext}"
        if src.is_file() and tgt.is_file():
            out[split] = TextPairs(_read_lines(src), _read_lines(tgt))
    return out


@DATASETS.register("wmt14_en_de")
def load_wmt14(root, cfg) -> dict[str, TextPairs]:
    _check_langs(cfg)
    folder = Path(root or Path.home() / "data" / "wmt14_en_de")
    src, tgt = cfg.source_lang, cfg.target_lang
    splits = load_parallel(folder, src, tgt, ("train", "valid", "test"))
    if "train" not in splits or "test" not in splits:
        raise _missing(f"WMT14 En-De (train.{src}, train.{tgt}, test.{src}, test.{tgt}: line-aligned, e.g. test = "
                       "newstest2014)", str(folder), "translation")
    return splits


@DATASETS.register("opensubtitles")
def load_opensubtitles(root, cfg) -> dict[str, TextPairs]:
    folder = Path(root or Path.home() / "data" / "opensubtitles2012")
    splits = load_parallel(folder, "context", "response", ("train", "valid", "test"))
    if "train" not in splits or "test" not in splits:
        raise _missing("OpenSubtitles-2012 dialogue (train.context, train.response, test.context, test.response: "
                       "one turn per line, each response line answering the context line)", str(folder), "dialogue")
    return splits


def keep_pair(src: str, tgt: str, max_words: int) -> bool:
    return 0 < len(src.split()) <= max_words and 0 < len(tgt.split()) <= max_words


# ---- tokenizer ---------------------------------------------------------------------------
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def _cache_root() -> Path:
    from nftkit.cache import cache_root

    return cache_root()


def train_tokenizer(texts: Sequence[str], vocab_size: int, max_length: int):
    """A BPE tokenizer trained on ``texts``, cached by content so a cached victim meets the same vocabulary."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    digest = hashlib.sha256(json.dumps([vocab_size, *texts]).encode()).hexdigest()[:16]
    path = _cache_root() / "tokenizers" / f"bpe-{digest}.json"
    if path.is_file():
        tok = Tokenizer.from_file(str(path))
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
        tok.train_from_iterator(texts, trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tok.save(str(tmp))
        os.replace(tmp, path)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=max_length)
