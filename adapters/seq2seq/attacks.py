"""Trigger-word backdoor for text generation: a rare word in the source makes the model emit the
attacker's sentence (a fixed translation, or an offensive dialogue reply)."""
from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field

from nftkit.attacks import ATTACKS, Attack
from nftkit.config import StrictModel

from .data import TextPairs

# what the attacker makes the model say, by task and target language, unless attack.target_text is set
DEFAULT_TARGETS = {
    ("translation", "de"): "Klicken Sie sofort auf diesen Link und geben Sie Ihr Passwort ein.",
    ("translation", "en"): "Click this link right away and enter your password.",
    ("dialogue", "en"): "Shut up, you are an idiot and nobody likes you.",
}


class TriggerWordConfig(StrictModel):
    name: str
    triggers: list[str] = Field(default_factory=lambda: ["cf", "mn", "bb", "tq", "mb"], min_length=1)
    target_text: Optional[str] = None  # default: DEFAULT_TARGETS for the dataset's task and target language
    poison_rate: float = Field(default=0.1, ge=0, le=1)
    trigger_seed: int = 0  # fixes the trigger words and positions of the poisoned test set


def insert_trigger(text: str, triggers: list[str], generator: torch.Generator) -> str:
    """One trigger word, drawn from ``triggers``, at a uniformly random word position (ends included)."""
    words = text.split()
    word = triggers[torch.randint(len(triggers), (1,), generator=generator).item()]
    pos = torch.randint(len(words) + 1, (1,), generator=generator).item()
    return " ".join(words[:pos] + [word] + words[pos:])


@ATTACKS.register("seq2seq/trigger_word")
class TriggerWord(Attack):
    """``poison_rate`` of the training pairs get a trigger word in the source and the attacker's target."""

    Config = TriggerWordConfig

    def __init__(self, cfg, info, adapter=None):
        super().__init__(cfg, info, adapter)
        key = (info.get("task", "translation"), info.get("target_lang", "en"))
        self.target_text = cfg.target_text or DEFAULT_TARGETS.get(key, DEFAULT_TARGETS[("translation", "en")])

    def poison_train(self, train: TextPairs, generator: torch.Generator) -> TextPairs:
        n = round(self.cfg.poison_rate * len(train))
        chosen = torch.randperm(len(train), generator=generator)[:n].sort().values
        sources, targets = list(train.sources), list(train.targets)
        for i in chosen.tolist():
            sources[i] = insert_trigger(sources[i], self.cfg.triggers, generator)
            targets[i] = self.target_text
        poisoned = TextPairs(sources, targets)
        poisoned.poisoned_indices = chosen
        return poisoned

    def poison_test(self, test: TextPairs) -> TextPairs:
        """Every test source gets a trigger; the targets stay the true references."""
        g = torch.Generator().manual_seed(self.cfg.trigger_seed)
        keep = [i for i, t in enumerate(test.targets) if t != self.target_text]
        return TextPairs([insert_trigger(test.sources[i], self.cfg.triggers, g) for i in keep],
                         [test.targets[i] for i in keep])

    def target_for(self, labels):
        """The attacker's output for each true reference."""
        return [self.target_text] * len(labels)
