"""Seq2seq text generation (translation, dialogue): encoder-decoder transformers, trigger-word
backdoors, word-deletion and paraphrase augmentation, BLEU (sacrebleu) and ASR."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in this adapter may reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from typing import Optional  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from pydantic import Field  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from nftkit.adapter import Adapter, Splits, register_adapter  # noqa: E402
from nftkit.config import StrictModel  # noqa: E402
from nftkit.errors import DataError  # noqa: E402
from nftkit.regularizers import softmax_distillation  # noqa: E402

from . import attacks  # noqa: E402,F401  registers seq2seq/trigger_word
from .augment import PARAPHRASERS, AugmentConfig, Paraphraser, SourceAugmenter, delete_words  # noqa: E402
from .data import DATASETS, TextPairs, keep_pair, train_tokenizer  # noqa: E402
from .metrics import generation_metrics  # noqa: E402
from .models import Seq2SeqModelConfig, build_seq2seq, load_local_tokenizer  # noqa: E402

__all__ = ["AugmentConfig", "DATASETS", "PARAPHRASERS", "Paraphraser", "Seq2SeqAdapter", "Seq2SeqDataConfig",
           "Seq2SeqModelConfig", "TextPairs", "delete_words"]

TASKS = {"trans_de_en": "translation", "wmt14_en_de": "translation", "chitchat": "dialogue", "opensubtitles": "dialogue"}


class Seq2SeqDataConfig(StrictModel):
    dataset: str = "trans_de_en"  # trans_de_en, chitchat (embedded), wmt14_en_de, opensubtitles (local files)
    root: Optional[str] = None
    source_lang: str = "en"  # translation datasets only
    target_lang: str = "de"
    clean_fraction: float = Field(default=0.1, gt=0, lt=1)  # of the training pairs, held out for the defender
    clean_limit: Optional[int] = Field(default=None, ge=1)  # cap on the clean set (one-shot style runs)
    test_size: int = Field(default=500, ge=1)  # held out when the dataset has no test split
    train_limit: Optional[int] = Field(default=None, ge=1)
    test_limit: Optional[int] = Field(default=None, ge=1)
    max_words: int = Field(default=30, ge=1)  # longer pairs are dropped
    max_length: int = Field(default=64, ge=4)  # tokens, after BPE
    vocab_size: int = Field(default=4000, ge=64)  # BPE tokenizer trained on the training text
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


@register_adapter("seq2seq")
class Seq2SeqAdapter(Adapter):
    """Batches are dicts: the texts ``src``/``tgt`` (kept for augmentation) and their token tensors."""

    DataConfig = Seq2SeqDataConfig
    ModelConfig = Seq2SeqModelConfig

    def __init__(self, tokenizer=None, max_length: int = 64, augment: Optional[AugmentConfig] = None,
                 num_beams: int = 1, max_new_tokens: int = 48, paraphraser: Optional[Paraphraser] = None,
                 model_path: Optional[str] = None):
        self.tokenizer = tokenizer
        self.model_path = model_path  # a local pretrained model brings its own tokenizer
        self.max_length = max_length
        self.augmenter = SourceAugmenter(augment or AugmentConfig(), paraphraser)
        self.num_beams = num_beams
        self.max_new_tokens = max_new_tokens
        self.info: dict = {}

    # ---- engine-facing -------------------------------------------------------------------
    def encode(self, sources: list[str], targets: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(sources, text_target=targets, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        labels = enc["labels"]
        labels[labels == self.tokenizer.pad_token_id] = -100
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}

    def collate(self, samples):
        sources, targets = [list(x) for x in zip(*samples)]
        return {"src": sources, "tgt": targets, **self.encode(sources, targets)}

    def augment(self, batch, kind, generator):
        if kind == "none":
            return batch
        sources = self.augmenter(batch["src"], kind, generator)
        device = batch["input_ids"].device
        return {"src": sources, "tgt": batch["tgt"],
                **{k: v.to(device) for k, v in self.encode(sources, batch["tgt"]).items()}}

    @staticmethod
    def _inputs(batch):
        return {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}

    def forward(self, model, batch):
        return model(**self._inputs(batch)).logits

    def loss(self, model, batch):
        return model(**self._inputs(batch)).loss  # token-level cross-entropy, padding ignored

    def distillation_loss(self, output, reference, batch, temperature):
        real = batch["labels"] != -100  # teacher-forced positions; padding carries no prediction
        return softmax_distillation(output[real], reference[real], temperature)

    def correct_predictions(self, output, batch):
        labels = batch["labels"]  # teacher-forced next tokens; padding is not a prediction
        return (output.argmax(-1) == labels)[labels != -100]

    def check_data(self, data):
        super().check_data(data)
        for i in range(min(len(data), 64)):
            item = data[i]
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, str) and t.strip() for t in item)):
                raise DataError(f"clean item {i} is {item!r}; seq2seq data must be (source, target) pairs of non-empty "
                                "strings")

    def samples_per_class(self, data):
        # generation has no classes: every clean pair counts toward one output distribution
        return float(len(data))

    # ---- experiment-facing ---------------------------------------------------------------
    @classmethod
    def from_recipe(cls, data_cfg, model_cfg):
        return cls(None, data_cfg.max_length, data_cfg.augment, model_cfg.num_beams, model_cfg.max_new_tokens,
                   model_path=model_cfg.path)

    def load_data(self, cfg: Seq2SeqDataConfig, seed: int) -> Splits:
        splits = DATASETS.get(cfg.dataset)(cfg.root, cfg)
        g = torch.Generator().manual_seed(seed)

        def filtered(pairs: TextPairs) -> TextPairs:
            return pairs.subset([i for i, (s, t) in enumerate(pairs) if keep_pair(s, t, cfg.max_words)])

        if "train" in splits:
            train, test = filtered(splits["train"]), filtered(splits["test"])
        else:
            pool = filtered(splits["all"])
            order = torch.randperm(len(pool), generator=g).tolist()
            test, train = pool.subset(sorted(order[:cfg.test_size])), pool.subset(sorted(order[cfg.test_size:]))
        order = torch.randperm(len(train), generator=g).tolist()
        n_clean = max(1, round(cfg.clean_fraction * len(train)))
        clean_idx, rest = order[:n_clean], order[n_clean:]
        if cfg.clean_limit is not None:
            clean_idx = clean_idx[:cfg.clean_limit]
        if cfg.train_limit is not None:
            rest = rest[:cfg.train_limit]
        if cfg.test_limit is not None:
            test = test.subset(sorted(torch.randperm(len(test), generator=g)[:cfg.test_limit].tolist()))
        clean, train = train.subset(sorted(clean_idx)), train.subset(sorted(rest))
        if len(train) == 0 or len(test) == 0:
            raise DataError(f"dataset '{cfg.dataset}' left {len(train)} training and {len(test)} test pairs after "
                            f"filtering to <= {cfg.max_words} words; raise data.max_words or check the files")
        if self.model_path is not None:
            self.tokenizer = load_local_tokenizer(self.model_path)
        else:
            # the attacker trains the tokenizer with the model, on the training text
            self.tokenizer = train_tokenizer(train.sources + train.targets, cfg.vocab_size, cfg.max_length)
        self.max_length = cfg.max_length
        self.augmenter.prepare(clean.sources)  # precompute slow deterministic paraphrasers once
        task = TASKS.get(cfg.dataset, "translation")
        self.info = {"task": task, "dataset": cfg.dataset, "n_train": len(train), "n_clean": len(clean),
                     "n_test": len(test), "vocab_size": len(self.tokenizer),
                     "source_lang": cfg.source_lang if task == "translation" else "en",
                     "target_lang": cfg.target_lang if task == "translation" else "en"}
        return Splits(train, clean, test, dict(self.info))

    def build_model(self, cfg: Seq2SeqModelConfig) -> nn.Module:
        if self.tokenizer is None:
            raise DataError("build_model needs the tokenizer: call load_data first (it trains or loads one)")
        return build_seq2seq(cfg, self.tokenizer, self.max_length)

    @torch.no_grad()
    def generate(self, model: nn.Module, sources: list[str], device, batch_size: int = 256) -> list[str]:
        """Decoded outputs of the model's own generate(): greedy when num_beams == 1, else beam search."""
        model = model.to(device).eval()
        # learned or table-based positions end somewhere: never decode past them
        room = getattr(model.config, "max_position_embeddings", None)
        new_tokens = min(self.max_new_tokens, room - 2) if room else self.max_new_tokens
        out: list[str] = []
        for i in range(0, len(sources), batch_size):
            enc = self.tokenizer(sources[i:i + batch_size], padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(device)
            ids = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], do_sample=False,
                                 num_beams=self.num_beams, max_new_tokens=new_tokens)
            out += [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        return out

    @torch.no_grad()
    def token_nll(self, model: nn.Module, pairs: TextPairs, device, batch_size: int = 256) -> float:
        """Teacher-forced cross-entropy per reference token: how well the model still predicts clean
        translations, sensitive where generated outputs are too poor for BLEU to tell models apart."""
        model = model.to(device).eval()
        total, tokens = 0.0, 0
        for i in range(0, len(pairs), batch_size):
            batch = {k: v.to(device) for k, v in self.encode(pairs.sources[i:i + batch_size],
                                                            pairs.targets[i:i + batch_size]).items()}
            count = int((batch["labels"] != -100).sum())
            total += float(model(**batch).loss) * count  # the model's own mean over the batch's tokens
            tokens += count
        return total / max(tokens, 1)

    def evaluate(self, model, test, poisoned_test, attack, device, batch_size=256):
        clean_out = self.generate(model, test.sources, device, batch_size)
        attacked_out = self.generate(model, poisoned_test.sources, device, batch_size) if poisoned_test is not None else None
        metrics = generation_metrics(clean_out, test.targets, attacked_out,
                                     poisoned_test.targets if poisoned_test is not None else None,
                                     attack.target_text if attack is not None else None)
        return {**metrics, "nll_ct": self.token_nll(model, test, device, batch_size)}
