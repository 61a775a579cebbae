"""Spoken keywords synthesised offline with espeak-ng: ``root/<word>/<n>.wav``, deterministic from a seed."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from nftkit.errors import DataError

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
# espeak-ng's own English voices; the mbrola ones (mb/...) need extra packages
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m7", "+f1", "+f2", "+f3", "+f4", "+f5")


def espeak_ng() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise DataError("espeak-ng is not installed; install it with 'apt-get install espeak-ng' "
                        "(or point data.root at a folder of <word>/<n>.wav clips)")
    return exe


def voice_spec(word: str, n: int, seed: int) -> dict:
    """The espeak-ng settings of clip n of a word: seeded per clip, so adding words or clips never
    changes the clips already there."""
    rng = random.Random(f"{seed}/{word}/{n}")
    return {"voice": rng.choice(ACCENTS) + rng.choice(VARIANTS), "speed": rng.randint(120, 200),
            "pitch": rng.randint(20, 80), "amplitude": rng.randint(60, 140)}


def synthesize(root: str | Path, words: Sequence[str] = WORDS, per_word: int = 20, seed: int = 0) -> list[tuple[str, str]]:
    """Write the clips that are missing; return ``(relative path, word)`` for every wanted clip."""
    root = Path(root)
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"seed": seed, "clips": {}}
    if manifest["seed"] != seed:
        raise DataError(f"{root} holds clips synthesised with seed {manifest['seed']}, not {seed}; "
                        "use another data.root or the same data.synth_seed")
    wanted, exe = [], None
    for word in words:
        for n in range(per_word):
            rel, spec = f"{word}/{n}.wav", voice_spec(word, n, seed)
            wanted.append((rel, word))
            if manifest["clips"].get(rel) == spec and (root / rel).is_file():
                continue
            exe = exe or espeak_ng()
            (root / word).mkdir(parents=True, exist_ok=True)
            tmp = root / f"{rel}.tmp"  # renamed when complete: a killed run leaves no truncated clip
            subprocess.run([exe, "-v", spec["voice"], "-s", str(spec["speed"]), "-p", str(spec["pitch"]),
                            "-a", str(spec["amplitude"]), "-w", str(tmp), word], check=True, capture_output=True)
            os.replace(tmp, root / rel)
            manifest["clips"][rel] = spec
    if exe is not None:
        tmp = manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.replace(tmp, manifest_path)
    return wanted
