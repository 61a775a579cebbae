"""Encoder-decoder transformers from Hugging Face transformers: small ones built from a config and
trained here, or any AutoModelForSeq2SeqLM saved in a local folder. Nothing is fetched from a hub."""
from __future__ import annotations

import os

# belt and braces: even a mistaken hub id must fail instead of downloading
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from typing import Literal, Optional  # noqa: E402

import torch.nn as nn  # noqa: E402
from pydantic import Field  # noqa: E402

from nftkit.config import StrictModel  # noqa: E402

from .augment import local_folder  # noqa: E402


class Seq2SeqModelConfig(StrictModel):
    # built from a config when path is not set; mbart is pre-LayerNorm, which tolerates larger SGD steps
    arch: Literal["marian", "bart", "mbart"] = "marian"
    path: Optional[str] = None  # local folder with a saved encoder-decoder and its tokenizer
    d_model: int = Field(default=128, ge=8)
    layers: int = Field(default=2, ge=1)  # encoder and decoder each
    heads: int = Field(default=4, ge=1)
    ffn_dim: int = Field(default=256, ge=8)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    # an untied output layer keeps a mask on it (mask_classifier=true) from rescaling the input embeddings
    tie_output_embeddings: bool = False
    # decoding, through the model's own generate()
    num_beams: int = Field(default=1, ge=1)
    max_new_tokens: int = Field(default=48, ge=1)


def build_seq2seq(cfg: Seq2SeqModelConfig, tokenizer, max_length: int) -> nn.Module:
    if cfg.path is not None:
        return load_local(cfg.path)
    from transformers import (BartConfig, BartForConditionalGeneration, MarianConfig, MarianMTModel, MBartConfig,
                              MBartForConditionalGeneration)

    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               bos_token_id=tokenizer.bos_token_id, forced_eos_token_id=tokenizer.eos_token_id)
    shape = dict(vocab_size=len(tokenizer), d_model=cfg.d_model, encoder_layers=cfg.layers, decoder_layers=cfg.layers,
                 encoder_attention_heads=cfg.heads, decoder_attention_heads=cfg.heads, encoder_ffn_dim=cfg.ffn_dim,
                 decoder_ffn_dim=cfg.ffn_dim, dropout=cfg.dropout, attention_dropout=0.0, activation_dropout=0.0,
                 max_position_embeddings=max(max_length, cfg.max_new_tokens) + 8, tie_word_embeddings=cfg.tie_output_embeddings)
    if cfg.arch == "marian":
        config = MarianConfig(**shape, **ids, decoder_start_token_id=tokenizer.pad_token_id,
                              share_encoder_decoder_embeddings=True, scale_embedding=True)
        model = MarianMTModel(config)
    elif cfg.arch == "mbart":
        config = MBartConfig(**shape, **ids, decoder_start_token_id=tokenizer.eos_token_id, scale_embedding=True)
        model = MBartForConditionalGeneration(config)
    else:
        config = BartConfig(**shape, **ids, decoder_start_token_id=tokenizer.eos_token_id)
        model = BartForConditionalGeneration(config)
    gen = model.generation_config
    gen.decoder_start_token_id = config.decoder_start_token_id
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id = ids["pad_token_id"], ids["eos_token_id"], ids["bos_token_id"]
    gen.forced_eos_token_id = None
    gen.bad_words_ids = [[tokenizer.pad_token_id]]  # a small model may otherwise emit padding mid-sentence
    return model


def load_local(path: str) -> nn.Module:
    """A saved AutoModelForSeq2SeqLM (safetensors only: pickled weights can run code)."""
    from transformers import AutoModelForSeq2SeqLM

    folder = local_folder(path, "model.path")
    return AutoModelForSeq2SeqLM.from_pretrained(folder, local_files_only=True, use_safetensors=True)


def load_local_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(local_folder(path, "model.path"), local_files_only=True)
