"""Decoding (PyAV), log-mel features (torch.stft + transformers' mel filters) and an in-memory dataset."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import Dataset
from transformers.audio_utils import mel_filter_bank, window_function

from nftkit.errors import DataError


def read_audio(path: str | Path, sample_rate: int) -> torch.Tensor:
    """Any file FFmpeg can decode, as mono float32 in [-1, 1] resampled to ``sample_rate``."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    with av.open(str(path)) as container:
        chunks = [out.to_ndarray() for frame in container.decode(audio=0) for out in resampler.resample(frame)]
    chunks += [out.to_ndarray() for out in resampler.resample(None)]  # flush the resampler's tail
    if not chunks:
        raise DataError(f"{path} holds no audio samples")
    return torch.from_numpy(np.concatenate(chunks, axis=1)[0])


def fit_clip(wave: torch.Tensor, length: int, where: float) -> torch.Tensor:
    """Trim the silence around the word, then place it in a ``length``-sample window at ``where`` (0 = start,
    1 = end of the free room): a word always at the same place would let the model cheat on position."""
    loud = (wave.abs() > 0.02 * wave.abs().max()).nonzero().flatten()
    if len(loud):
        wave = wave[loud[0]:loud[-1] + 1]
    if len(wave) >= length:
        start = (len(wave) - length) // 2
        return wave[start:start + length].clone()
    offset = int(where * (length - len(wave)))
    out = torch.zeros(length)
    out[offset:offset + len(wave)] = wave
    return out


class LogMel:
    """Waveforms ``N x T`` -> log-mel spectrograms ``N x 1 x n_mels x frames`` (25 ms windows, 10 ms hop)."""

    def __init__(self, sample_rate: int = 16000, n_mels: int = 40):
        self.win = round(0.025 * sample_rate)
        self.hop = round(0.010 * sample_rate)
        self.n_fft = 1 << (self.win - 1).bit_length()
        # transformers' filters are (frequency bins x mels); slaney = librosa's default
        self.mel = torch.from_numpy(mel_filter_bank(
            num_frequency_bins=self.n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=20.0,
            max_frequency=sample_rate / 2, sampling_rate=sample_rate, norm="slaney", mel_scale="slaney")).float()
        self.window = torch.from_numpy(window_function(self.win, "hann", frame_length=self.n_fft)).float()

    def __call__(self, waves: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(waves, self.n_fft, self.hop, window=self.window, center=True, return_complex=True).abs() ** 2
        mel = torch.einsum("nft,fm->nmt", spec, self.mel)
        return torch.log(mel + 1e-6).unsqueeze(1)


class KeywordDataset(Dataset):
    """Waveforms ``N x T`` with labels; items are ``(log-mel 1 x n_mels x frames, label)``.

    Attacks edit ``waves`` and build a new dataset: features are computed here, so a trigger always goes
    through the same front end as the speech it is mixed into.
    """

    def __init__(self, waves: torch.Tensor, labels: torch.Tensor, frontend: LogMel, features: torch.Tensor | None = None):
        if waves.dim() != 2 or len(waves) != len(labels):
            raise DataError(f"expected waveforms N x T and N labels, got {tuple(waves.shape)} and {tuple(labels.shape)}")
        self.waves = waves
        self.targets = labels.long()
        self.frontend = frontend
        self.features = frontend(waves) if features is None else features

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        return self.features[i], int(self.targets[i])

    def subset(self, index: torch.Tensor) -> "KeywordDataset":
        return KeywordDataset(self.waves[index], self.targets[index], self.frontend, self.features[index])
