"""Video adapter: decoding, dataset layouts, clip-consistent augmentation, CNN+LSTM masks, attacks."""
from pathlib import Path

import numpy as np
import pytest
import torch

import nftkit
from nftkit.attacks import ATTACKS
from nftkit.adapters.video import ClipSpec, ClipTensorDataset, VideoAdapter, VideoModelConfig, build_video_model, read_clip
from nftkit.adapters.classification import cutmix
from nftkit.adapters.video.augment import crop_flip_clips, mixup_clips
from nftkit.adapters.video.data import find_videos

av = pytest.importorskip("av")


def write_video(path: Path, n_frames: int, size=(16, 16), base: int = 0) -> None:
    """Frame k is a flat grey of value base + 10 k, so decoded frames can be identified."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.height, s.width = size
        s.pix_fmt = "yuv420p"
        s.bit_rate = 2_000_000
        for k in range(n_frames):
            frame = np.full((*size, 3), min(255, base + 10 * k), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def write_fake_ucf101(root: Path, classes=("Archery", "Biking", "Diving"), n_train=4, n_test=2, n_frames=12, size=(16, 16)):
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    train, test = [], []
    for k, name in enumerate(classes):
        for g in range(n_train + n_test):
            rel = f"{name}/v_{name}_g{g + 1:02d}_c01.avi"
            write_video(root / "UCF-101" / rel, n_frames, size, base=40 * k)
            (train if g < n_train else test).append(f"{rel} {k + 1}" if g < n_train else rel)
    (lists / "classInd.txt").write_text("".join(f"{k + 1} {n}\n" for k, n in enumerate(classes)))
    (lists / "trainlist01.txt").write_text("\n".join(train) + "\n")
    (lists / "testlist01.txt").write_text("\n".join(test) + "\n")


def test_read_clip_keeps_one_of_every_stride_frames(tmp_path):
    write_video(tmp_path / "v.avi", 20)
    clip = read_clip(tmp_path / "v.avi", ClipSpec(num_frames=4, frame_stride=5, height=8, width=12))
    assert clip.shape == (4, 3, 8, 12) and clip.dtype == torch.uint8
    levels = clip.float().mean((1, 2, 3))
    assert torch.allclose(levels, torch.tensor([0.0, 50, 100, 150]), atol=6)  # frames 0, 5, 10, 15
    short = read_clip(tmp_path / "v.avi", ClipSpec(num_frames=6, frame_stride=5, height=8, width=8))
    assert torch.equal(short[4], short[3]) and torch.equal(short[5], short[3])  # padded with the last frame


def test_undecodable_video_is_a_data_error(tmp_path):
    (tmp_path / "bad.avi").write_bytes(b"not a video")
    with pytest.raises(nftkit.DataError, match="cannot decode"):
        read_clip(tmp_path / "bad.avi", ClipSpec(2, 1, 8, 8))


def test_ucf101_layout_and_split_files(tmp_path):
    write_fake_ucf101(tmp_path)
    found, _ = find_videos("ucf101", str(tmp_path))
    assert found.classes == ["Archery", "Biking", "Diving"]
    assert len(found.train) == 12 and len(found.test) == 6
    assert [y for _, y in found.test] == [0, 0, 1, 1, 2, 2]


def test_hmdb51_layout_and_split_files(tmp_path):
    lists = tmp_path / "testTrainMulti_7030_splits"
    lists.mkdir()
    for name in ("jump", "wave"):
        lines = []
        for i, tag in enumerate(["1", "1", "2", "0"]):
            write_video(tmp_path / "hmdb51_org" / name / f"{name}_{i}.avi", 3)
            lines.append(f"{name}_{i}.avi {tag} ")
        (lists / f"{name}_test_split1.txt").write_text("\n".join(lines) + "\n")
    found, _ = find_videos("hmdb51", str(tmp_path))
    assert found.classes == ["jump", "wave"]
    assert len(found.train) == 4 and len(found.test) == 2  # tag 0 (unused) is dropped


@pytest.mark.parametrize("name", ["ucf101", "hmdb51"])
def test_missing_dataset_names_the_layout_and_the_embedded_recipe(tmp_path, name):
    with pytest.raises(nftkit.DataError, match="video/atari_clb") as err:
        find_videos(name, str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(err.value) and "\n" not in str(err.value)


def test_atari_clips_are_real_videos_labelled_by_game_or_held_action(tmp_path):
    pytest.importorskip("ale_py")
    from nftkit.adapters.video.atari import atari_folder

    games = atari_folder(str(tmp_path / "g"), ["pong", "breakout"], 2, 1, clip_len=10, seed=0)
    found, _ = find_videos("ucf101", str(games))
    assert found.classes == ["Pong", "Breakout"] and len(found.train) == 4 and len(found.test) == 2
    spec = ClipSpec(num_frames=2, frame_stride=5, height=16, width=16)
    pong, breakout = read_clip(found.train[0][0], spec), read_clip(found.train[2][0], spec)
    assert pong.float().std() > 1 and not torch.equal(pong, breakout)
    again = atari_folder(str(tmp_path / "g2"), ["pong", "breakout"], 2, 1, clip_len=10, seed=0)
    assert torch.equal(read_clip(again / "UCF-101" / found.train[0][0].relative_to(games / "UCF-101"), spec), pong)
    actions = atari_folder(str(tmp_path / "a"), ["boxing"], 2, 1, clip_len=5, seed=0, label="action", actions=("UP", "LEFT"))
    found, _ = find_videos("ucf101", str(actions))
    assert found.classes == ["Up", "Left"] and len(found.train) == 4
    with pytest.raises(nftkit.DataError, match="other settings"):
        atari_folder(str(tmp_path / "a"), ["boxing"], 3, 1, clip_len=5, seed=0, label="action", actions=("UP", "LEFT"))


def _clips(b=4, t=3, size=8, seed=0):
    """Clips whose frames are all identical, so a per-frame inconsistency shows up."""
    g = torch.Generator().manual_seed(seed)
    frame = torch.rand(b, 1, 3, size, size, generator=g)
    return frame.expand(b, t, 3, size, size).contiguous()


def test_crop_flip_is_shared_by_the_frames_of_a_clip():
    clips = _clips()
    out = crop_flip_clips(clips, torch.Generator().manual_seed(1), pad=2, flip=True)
    assert out.shape == clips.shape
    assert torch.equal(out[:, 1:], out[:, :1].expand_as(out[:, 1:]))
    assert not torch.equal(out, clips)


@pytest.mark.parametrize("mixer", [mixup_clips, cutmix])
def test_mixing_is_shared_by_the_frames_and_targets_stay_distributions(mixer):
    clips = _clips(b=6)
    targets = torch.nn.functional.one_hot(torch.arange(6) % 3, 3).float()
    mixed, mixed_t = mixer(clips, targets, torch.Generator().manual_seed(3), 1.0)
    assert torch.equal(mixed[:, 1:], mixed[:, :1].expand_as(mixed[:, 1:]))
    assert torch.allclose(mixed_t.sum(1), torch.ones(6))
    assert not torch.equal(mixed, clips)


def test_mixup_has_one_lambda_per_clip():
    clips = torch.stack([torch.full((2, 3, 4, 4), float(i)) for i in range(8)])
    targets = torch.nn.functional.one_hot(torch.arange(8), 8).float()
    mixed, mixed_t = mixup_clips(clips, targets, torch.Generator().manual_seed(0), 1.0)
    # a clip of constant value i mixed with partner j: value = lam i + (1 - lam) j, targets lam / 1 - lam
    lam = mixed_t.max(1).values
    assert len(set(lam.round(decimals=4).tolist())) > 1  # lambdas differ between clips
    for i in range(8):
        expected = (mixed_t[i] * torch.arange(8.0)).sum()
        assert torch.allclose(mixed[i], expected.expand_as(mixed[i]), atol=1e-5)


def _adapter(classes=3):
    return VideoAdapter(classes, model_cfg=VideoModelConfig(backbone="resnet_mini", width=4, hidden=6))


def _data(n=24, classes=3, t=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    clips = (torch.rand(n, t, 3, size, size, generator=g) * 200).to(torch.uint8)
    return ClipTensorDataset(clips, torch.arange(n) % classes)


def test_nft_masks_reach_backbone_bn_and_lstm_units_not_the_head():
    adapter = _adapter()
    torch.manual_seed(0)
    model = adapter.build_model(adapter.model_cfg)
    assert model(torch.rand(2, 3, 3, 16, 16)).shape == (2, 3)
    result = nftkit.purify(model, adapter, _data(), steps=2, batch_size=8)
    kinds = {t.name: t.kind for t in result.targets}
    assert kinds["lstm"] == "LSTM" and result.masks["lstm"].numel() == 6
    assert sum(k == "BatchNorm2d" for k in kinds.values()) >= 5
    assert "head" not in kinds and not any(k == "Conv2d" for k in kinds.values())
    assert type(result.model) is type(model) and result.model.state_dict().keys() == model.state_dict().keys()


def test_check_data_rejects_frames_without_time_axis():
    adapter = _adapter()
    bad = [(torch.rand(3, 16, 16), 0), (torch.rand(3, 16, 16), 1)]
    with pytest.raises(nftkit.DataError, match="T x 3 x H x W"):
        adapter.check_data(bad)


def test_torchvision_backbone_builds_and_rejects_width():
    model = build_video_model("resnet18", 5, hidden=8)
    assert model(torch.rand(1, 2, 3, 32, 32)).shape == (1, 5)
    with pytest.raises(nftkit.ConfigError, match="width"):
        build_video_model("resnet18", 5, width=4)


INFO = {"num_classes": 3, "clip_shape": (3, 3, 16, 16)}


def _attack(name, adapter=None, info=INFO, **kw):
    cls = ATTACKS.get(f"video/{name}")
    return cls(cls.Config(name=name, **kw), info, adapter)


def test_trigger_scales_with_frame_size_and_covers_every_frame():
    assert _attack("badnets", info={"num_classes": 3, "clip_shape": (2, 3, 224, 224)}).pattern.shape == (3, 20, 20)
    assert _attack("badnets", info={"num_classes": 3, "clip_shape": (2, 3, 112, 112)}).pattern.shape == (3, 10, 10)
    attack = _attack("badnets")
    assert attack.pattern.shape == (3, 2, 2)
    out = attack.apply(torch.zeros(2, 3, 3, 16, 16))
    assert torch.equal(out[..., -2:, -2:], attack.pattern.expand(2, 3, 3, 2, 2))
    assert out[..., :-2, :].abs().sum() == 0


def test_badnets_relabels_and_poisoned_test_keeps_true_labels():
    attack = _attack("badnets", poison_rate=0.25)
    train = _data()
    poisoned = attack.poison_train(train, torch.Generator().manual_seed(0))
    idx = poisoned.poisoned_indices
    assert len(idx) == 6 and (train.targets[idx] != 0).all() and (poisoned.targets[idx] == 0).all()
    clean_idx = [i for i in range(24) if i not in set(idx.tolist())]
    assert all(torch.equal(poisoned[i][0], train[i][0]) for i in clean_idx[:4])
    test = attack.poison_test(_data(9))
    assert len(test) == 6 and (test.targets != 0).all()
    assert torch.allclose(test[0][0][..., -2:, -2:], attack.pattern.expand(3, 3, 2, 2))


def test_clean_label_attack_keeps_labels_and_stays_in_budget():
    adapter = _adapter()
    train = _data(n=18)
    attack = _attack("clb", adapter, poison_rate=0.5, trigger_steps=2, pgd_steps=2, batch_size=4,
                     surrogate={"steps": 2, "batch_size": 6})
    before = attack.pattern.clone()
    poisoned = attack.poison_train(train, torch.Generator().manual_seed(0))
    assert torch.equal(poisoned.targets, train.targets)
    idx = poisoned.poisoned_indices
    assert len(idx) == 3 and (train.targets[idx] == 0).all()
    assert not torch.equal(attack.pattern, before)  # the universal trigger was optimised
    for i in range(18):
        diff = poisoned[i][0] - train[i][0]
        if i in set(idx.tolist()):
            assert torch.allclose(poisoned[i][0][..., -2:, -2:], attack.pattern.expand(3, 3, 2, 2), atol=1 / 255)
            assert diff[..., :-2, :].abs().max() <= attack.cfg.eps + 1 / 255
            assert diff[..., :-2, :].abs().max() > 0
        else:
            assert diff.abs().max() == 0


def test_clean_label_attack_needs_the_adapter():
    with pytest.raises(nftkit.ConfigError, match="adapter"):
        _attack("clb").poison_train(_data(), torch.Generator())


def test_spatial_grid_pooling_keeps_positions():
    torch.manual_seed(0)
    model = build_video_model("resnet_mini", 2, hidden=4, width=4, pool=4)
    assert model.lstm.input_size == 16 * 4 * 4  # 4w channels on a 4 x 4 grid
    assert model.backbone(torch.rand(2, 3, 32, 32)).shape == (2, 256)
    assert model(torch.rand(2, 3, 3, 32, 32)).shape == (2, 2)
    resnet = build_video_model("resnet18", 2, hidden=4, pool=2)
    assert resnet.lstm.input_size == 512 * 4 and resnet(torch.rand(1, 2, 3, 64, 64)).shape == (1, 2)


def test_per_sample_losses_and_few_shot_subsets():
    adapter = _adapter()
    torch.manual_seed(0)
    model = adapter.build_model(adapter.model_cfg).eval()
    data = _data(n=12)
    batch = adapter.collate([data[i] for i in range(4)])
    losses = adapter.sample_losses(model, batch)
    assert losses.shape == (4,) and torch.allclose(losses.mean(), adapter.loss(model, batch))
    few = adapter.few_shot(data, 1, torch.Generator().manual_seed(0))
    assert sorted(few.targets.tolist()) == [0, 1, 2]
