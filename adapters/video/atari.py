"""The embedded video dataset: Atari games rendered by the ALE emulator (the ale-py wheel ships the
ROMs), one class per game, played by a random agent that holds each action for a random time.

Clips are written as real .avi files (MPEG-4, like UCF-101's XviD) in the UCF-101 layout with split
files, so the embedded recipe reads them through the production loader. Generation is deterministic
for a seed and runs once per parameter set (a few seconds); the folder is reused afterwards.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from nftkit.errors import DataError

DEFAULT_GAMES = ("breakout", "pong", "freeway", "boxing", "space_invaders", "seaquest")


def _cache_root() -> Path:
    return Path(os.environ.get("NFTKIT_CACHE_DIR", Path.home() / ".cache" / "nftkit"))


def _write_video(path: Path, frames: np.ndarray, fps: int = 30) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 1_500_000
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _play(game: str, held_actions: list, clip_len: int, rng: np.random.Generator, noise: float = 0.0) -> list[np.ndarray]:
    """One clip of ``clip_len`` consecutive frames per entry of ``held_actions``: the agent holds that
    action (an ale_py.Action) through the clip, or plays randomly where it is None. Between clips it
    plays randomly for a while, so clips start from varied states and do not overlap."""
    from ale_py import ALEInterface, LoggerMode, roms

    ALEInterface.setLoggerMode(LoggerMode.Error)  # the emulator greets on stdout otherwise
    ale = ALEInterface()
    ale.setInt("random_seed", int(rng.integers(1 << 30)))
    ale.setFloat("repeat_action_probability", 0.0)
    ale.loadROM(roms.get_rom_path(game))
    actions = ale.getMinimalActionSet()
    state = {"held": actions[0], "left": 0}

    def step(forced=None):
        if forced is None and state["left"] == 0:
            state["held"], state["left"] = actions[int(rng.integers(len(actions)))], int(rng.integers(4, 20))
        state["left"] = max(0, state["left"] - 1)
        ale.act(forced if forced is not None else state["held"])
        if ale.game_over():
            ale.reset_game()

    for _ in range(int(rng.integers(100, 300))):  # leave the title screen behind
        step()
    clips: list[np.ndarray] = []
    for action in held_actions:
        frames = []
        for _ in range(clip_len):
            step(action)
            frame = ale.getScreenRGB()
            if noise > 0:  # a camera's sensor noise; emulator frames are flat colours without it
                frame = np.clip(frame + rng.normal(0, 255 * noise, frame.shape), 0, 255).astype(np.uint8)
            frames.append(frame)
        clips.append(np.stack(frames))
        for _ in range(int(rng.integers(10, 60))):
            step()
    return clips


def _pascal(name: str) -> str:
    return "".join(w.capitalize() for w in name.lower().split("_"))


def _classes(games: list[str], label: str, actions: list[str]) -> list[tuple[str, object]]:
    """(class name, action held or None) per class: one class per game, or one per held action."""
    if label == "game":
        return [(_pascal(g), None) for g in games]
    from ale_py import Action

    unknown = [a for a in actions if a.upper() not in Action.__members__]
    if unknown:
        raise DataError(f"unknown Atari action(s) {unknown}; choose from {', '.join(Action.__members__)}")
    return [(_pascal(a), Action.__members__[a.upper()]) for a in actions]


def atari_folder(root: str | None, games: list[str], train_per_class: int, test_per_class: int,
                 clip_len: int, seed: int, label: str = "game", actions: tuple[str, ...] = (), noise: float = 0.0) -> Path:
    """Write (once) and return a UCF-101-layout folder of Atari clips."""
    params = {"games": list(games), "train": train_per_class, "test": test_per_class, "clip_len": clip_len,
              "seed": seed, "label": label, "actions": list(actions) if label == "action" else [], "noise": noise, "v": 2}
    tag = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(os.path.expanduser(root)) if root else _cache_root() / "data" / f"atari-{tag}"
    if (folder / "params.json").is_file():
        if json.loads((folder / "params.json").read_text()) != params:
            raise DataError(f"{folder} holds Atari clips made with other settings; remove it or set data.root elsewhere")
        return folder
    try:
        from ale_py import roms

        known = set(roms.get_all_rom_ids())
    except ImportError:
        raise DataError("the embedded video dataset needs the ale-py package: pip install 'ale-py>=0.9'") from None
    unknown = [g for g in games if g not in known]
    if unknown:
        raise DataError(f"unknown Atari game(s) {unknown}; choose from the ROMs ale-py ships, e.g. {', '.join(DEFAULT_GAMES)}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        classes = _classes(games, label, list(actions))
        lists = stage / "ucfTrainTestlist"
        lists.mkdir()
        train_lines, test_lines = [], []
        per_class = train_per_class + test_per_class
        counts = {name: 0 for name, _ in classes}
        for g, game in enumerate(games):
            rng = np.random.default_rng([seed, g])
            wanted = [(k, name, held) for k, (name, held) in enumerate(classes) if label == "action" or name == _pascal(game)]
            # action classes draw their clips from every game, interleaved so each game state sees every action
            share = [per_class // len(games) + (g < per_class % len(games)) if label == "action" else per_class] * len(wanted)
            order = [w for n, w in zip(share, wanted) for _ in range(n)]
            order = [order[i] for i in rng.permutation(len(order))]
            for (k, name, held), frames in zip(order, _play(game, [h for _, _, h in order], clip_len, rng, noise)):
                counts[name] += 1
                c = counts[name]
                # UCF-101 names clips by group; one group per clip here, test clips after train ones
                rel = f"{name}/v_{name}_g{c:02d}_c01.avi"
                (stage / "UCF-101" / name).mkdir(parents=True, exist_ok=True)
                _write_video(stage / "UCF-101" / rel, frames)
                (train_lines if c <= train_per_class else test_lines).append((rel, k + 1))
        names = [name for name, _ in classes]
        (lists / "classInd.txt").write_text("".join(f"{k + 1} {n}\n" for k, n in enumerate(names)))
        (lists / "trainlist01.txt").write_text("".join(f"{rel} {k}\n" for rel, k in train_lines))
        (lists / "testlist01.txt").write_text("".join(f"{rel}\n" for rel, _ in test_lines))
        (stage / "params.json").write_text(json.dumps(params, sort_keys=True))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(stage, folder)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return folder
