"""Keyword spotting on spoken words synthesised with espeak-ng: a worked example of an nftkit adapter
that lives outside the nftkit package. Importing it registers the ``audio_kws`` adapter and the
``audio_kws/tone`` attack; see docs/writing-an-adapter.md."""
from .adapter import KeywordSpottingAdapter, KWSDataConfig, KWSModelConfig, KWSNet
from .attack import ToneTrigger
from .data import KeywordDataset, LogMel, read_audio
from .synth import WORDS, synthesize

__all__ = ["KWSDataConfig", "KWSModelConfig", "KWSNet", "KeywordDataset", "KeywordSpottingAdapter", "LogMel",
           "ToneTrigger", "WORDS", "read_audio", "synthesize"]
