"""Multi-label adapter: metrics against scikit-learn, mask rules of the ML-Decoder, readers, attack."""
import gzip
import json
import struct

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nftkit
from nftkit.adapters.multilabel import MultiLabelAdapter, MultiLabelImages, build_multilabel_model
from nftkit.adapters.multilabel.attacks import CleanImageBackdoor, CleanImageConfig
from nftkit.adapters.multilabel.data import read_coco, read_dataset, read_voc
from nftkit.adapters.multilabel.metrics import asymmetric_loss, attack_success_rate, mean_average_precision
from nftkit.adapters.multilabel.models import GroupFC
from nftkit.adapters.multilabel.mosaic import ensure_mosaics
from nftkit.reparam import NeuronMask, mask_rule

CLASSES = ["a", "b", "c", "d"]


def tiny_model(classes=4, queries=None):
    torch.manual_seed(0)
    return build_multilabel_model(classes, "resnet_small", 4, dim=8, heads=2, ffn=16, queries=queries, dropout=0.0)


def tiny_set(n=12, classes=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, classes, generator=g) < 0.5).float()
    labels[torch.arange(n), torch.arange(n) % classes] = 1.0
    pixels = (torch.rand(n, 3, size, size, generator=g) * 255).byte()
    return MultiLabelImages([f"img{i}" for i in range(n)], labels, None, _pixels=pixels)


# ---- metrics ---------------------------------------------------------------------------------

def test_map_matches_scikit_learn():
    from sklearn.metrics import average_precision_score

    g = torch.Generator().manual_seed(1)
    labels = (torch.rand(200, 6, generator=g) < 0.3).long()
    labels[:, 5] = 0  # a category with no positive: undefined AP, left out as in VOC/COCO evaluation
    scores = torch.rand(200, 6, generator=g) + 0.3 * labels
    scores[:10, 0] = scores[10:20, 0]  # ties
    ours = mean_average_precision(scores, labels)
    ref = 100 * average_precision_score(labels[:, :5].numpy(), scores[:, :5].numpy(), average="macro")
    assert ours == pytest.approx(ref, abs=1e-4)
    assert mean_average_precision(labels.float(), labels) == pytest.approx(100.0)


def test_asr_counts_only_the_attacked_categories():
    true = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 0], [0, 1, 0]]).float()
    target = true.clone()
    target[:3, 1] = 0  # the attacker removes category 1 from the first three images
    scores = torch.tensor([[0.9, 0.2, 0.9], [0.1, 0.4, 0.1], [0.9, 0.8, 0.1], [0.9, 0.9, 0.9]])
    # images 0 and 1 lose category 1 (other mistakes do not matter); image 2 keeps it; image 3 is not attacked
    assert attack_success_rate(scores, true, target) == pytest.approx(100 * 2 / 3)


def test_asymmetric_loss_reduces_to_bce_without_focusing():
    logits, targets = torch.randn(5, 4), torch.rand(5, 4)
    asl = asymmetric_loss(logits, targets, gamma_neg=0, gamma_pos=0, clip=0)
    assert asl == pytest.approx(F.binary_cross_entropy_with_logits(logits, targets, reduction="sum").item() / 5, rel=1e-5)
    assert asymmetric_loss(logits, targets) < asl  # focusing and the margin down-weight easy negatives


# ---- model and masks -------------------------------------------------------------------------

def test_group_fc_is_per_query_projection_and_its_mask_scales_weight_rows_only():
    fc = GroupFC(queries=3, dim=5, num_classes=7)  # k = 3 logits per query, the last 2 unused
    h = torch.randn(2, 3, 5)
    w = fc.weight.view(3, 3, 5)
    manual = torch.stack([h[:, q] @ w[q].T for q in range(3)], 1).flatten(1)[:, :7] + fc.bias
    assert torch.allclose(fc(h), manual, atol=1e-6)
    with torch.no_grad():
        fc.bias.uniform_()
    wrapped = NeuronMask(fc, mask_rule(fc, "bn_gamma"))
    with torch.no_grad():
        wrapped.mask.uniform_(0.1, 1.0)
    expect = (fc(h) - fc.bias) * wrapped.mask[:7] + fc.bias
    assert torch.allclose(wrapped(h), expect, atol=1e-6)


def test_attention_mask_reaches_packed_in_proj_rows_and_folds_exactly():
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    q, kv = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    wrapped = NeuronMask(mha, mask_rule(mha, "bn_gamma")).eval()
    assert wrapped.mask.shape == (24,)
    base_out = mha(q, kv, kv, need_weights=False)[0]
    assert torch.allclose(wrapped(q, kv, kv, need_weights=False)[0], base_out)
    with torch.no_grad():
        wrapped.mask[16:] = 0.0  # value rows off: the attention output is out_proj's bias alone
    out = wrapped(q, kv, kv, need_weights=False)[0]
    assert torch.allclose(out, mha.out_proj.bias.expand_as(out), atol=1e-6)
    with torch.no_grad():
        wrapped.mask.uniform_(0.2, 1.0)
    wrapped.train()
    wrapped(q, kv, kv, need_weights=False)[0].sum().backward()  # functional_call carries the gradient
    assert wrapped.mask.grad is not None and wrapped.mask.grad.abs().sum() > 0
    wrapped.eval()
    expect = wrapped(q, kv, kv, need_weights=False)[0]
    folded = wrapped.fold().eval()
    assert torch.allclose(folded(q, kv, kv, need_weights=False)[0], expect, atol=1e-6)


def test_nft_masks_reach_the_decoder_and_fold_to_the_original_keys():
    model, data = tiny_model(queries=2), tiny_set()
    adapter = MultiLabelAdapter(4)
    result = nftkit.purify(model, adapter, data, steps=2, batch_size=6)
    names = {t.name for t in result.targets}
    assert {"head.embed", "head.decoder.attn", "head.decoder.linear1", "head.decoder.linear2"} <= names
    assert "head.group_fc" not in names  # the classifier is excluded by default
    assert list(result.model.state_dict()) == list(model.state_dict())
    with_fc = nftkit.purify(model, adapter, data, steps=1, batch_size=6, mask_classifier=True)
    assert with_fc.masks["head.group_fc"].shape == (4,)  # 2 queries x 2 logits


def test_mix_interpolates_multi_hot_targets():
    adapter = MultiLabelAdapter(4)
    x, y = torch.rand(8, 3, 16, 16), (torch.rand(8, 4) < 0.5).float()
    xm, t = adapter.augment((x, y), "mix", torch.Generator().manual_seed(0))
    assert xm.shape == x.shape and t.shape == y.shape and ((t >= 0) & (t <= 1)).all()
    assert not torch.equal(t, y) and set(t.flatten().tolist()) - {0.0, 1.0}
    again = adapter.augment((x, y), "mix", torch.Generator().manual_seed(0))
    assert torch.equal(again[1], t)
    assert torch.equal(adapter.augment((x, y), "basic", torch.Generator())[1], y)


@pytest.mark.parametrize("labels, message", [
    (torch.zeros(0, 4), "empty"),
    (torch.ones(3, 5), "5 categories"),
    (torch.full((3, 4), 0.5), "multi-hot"),
    (torch.tensor([[1.0, 0, 0, 0]] * 3), "fewer than two"),
])
def test_bad_clean_sets_get_one_clear_error(labels, message):
    data = MultiLabelImages([f"x{i}" for i in range(len(labels))], labels, None,
                            _pixels=torch.zeros(len(labels), 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(nftkit.DataError, match=message):
        MultiLabelAdapter(4).check_data(data)


# ---- data ------------------------------------------------------------------------------------

def _png(path, value=128, size=12):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def write_voc(root, year="2007", splits=(("trainval", 6), ("test", 4))):
    base = root / "VOCdevkit" / f"VOC{year}"
    (base / "ImageSets" / "Main").mkdir(parents=True)
    (base / "Annotations").mkdir()
    n = 0
    for split, count in splits:
        ids = []
        for _ in range(count):
            image_id = f"{n:06d}"
            objs = [("person", 0), ("car", 0), ("dog" if n % 2 else "cat", 1)]
            xml = "".join(f"<object><name>{c}</name><difficult>{d}</difficult></object>" for c, d in objs[: 2 + n % 2])
            (base / "Annotations" / f"{image_id}.xml").write_text(
                f"<annotation><filename>{image_id}.jpg</filename>{xml}</annotation>")
            _png(base / "JPEGImages" / f"{image_id}.jpg", value=10 * n)
            ids.append(image_id)
            n += 1
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def write_coco(root, split, n, cats=((3, "zebra"), (1, "person"), (2, "car"))):
    images = [{"id": 10 + i, "file_name": f"{i}.png"} for i in range(n)]
    anns = [{"id": k, "image_id": 10 + i, "category_id": [1, 2, 3][(i + j) % 3], "bbox": [0, 0, 1, 1]}
            for k, (i, j) in enumerate((i, j) for i in range(n) for j in range(1 + i % 2))]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": c, "name": s} for c, s in cats]}))
    for im in images:
        _png(root / split / im["file_name"])
    return root


def test_voc_reader_turns_xml_into_multi_hot_and_skips_difficult(tmp_path):
    write_voc(tmp_path)
    split, classes = read_voc(tmp_path, "trainval")
    assert len(classes) == 20 and len(split.files) == 6
    person, car, dog = classes.index("person"), classes.index("car"), classes.index("dog")
    assert split.labels[:, person].all() and split.labels[:, car].all()
    assert split.labels[:, dog].sum() == 0  # dog objects are all marked difficult
    with_difficult, _ = read_voc(tmp_path, "trainval", include_difficult=True)
    assert with_difficult.labels[1, dog] == 1


def test_coco_reader_orders_categories_by_id(tmp_path):
    write_coco(tmp_path, "val2014", 4)
    split, classes = read_coco(tmp_path, "val2014")
    assert classes == ["person", "car", "zebra"]
    assert split.labels.tolist()[:2] == [[1, 0, 0], [0, 1, 1]]
    data = MultiLabelImages(split.files, split.labels, 8)
    assert data[0][0].shape == (3, 8, 8) and data[0][0].max() <= 1


@pytest.mark.parametrize("name", ["voc2007", "voc2012", "coco2014"])
def test_missing_dataset_names_where_to_put_it_and_the_embedded_recipe(name, tmp_path):
    with pytest.raises(nftkit.DataError, match="not found.*multilabel/fmnist_mosaic_clean_image"):
        read_dataset(name, str(tmp_path / "nowhere"))


def write_fake_fmnist(root, n=40):
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        images = rng.integers(1, 255, (n, 28, 28), dtype=np.uint8)
        with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">HBBIII", 0, 8, 3, n, 28, 28) + images.tobytes())
        with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">HBBI", 0, 8, 1, n) + (np.arange(n) % 10).astype(np.uint8).tobytes())


def test_mosaics_are_written_as_coco_and_read_back_with_their_classes(tmp_path):
    write_fake_fmnist(tmp_path)
    folder = ensure_mosaics(str(tmp_path / "mosaic"), 30, 10, fmnist_root=str(tmp_path))
    train, test, classes = read_dataset("fmnist_mosaic", str(folder))
    assert len(train.files) == 30 and len(test.files) == 10 and classes[0] == "T-shirt/top"
    spec = json.loads((folder / "annotations" / "instances_train.json").read_text())
    per_image = {}
    for ann in spec["annotations"]:
        per_image.setdefault(ann["image_id"], set()).add(ann["category_id"] - 1)
    assert all(1 <= len([a for a in spec["annotations"] if a["image_id"] == i]) <= 4 for i in per_image)
    assert [set(np.flatnonzero(r.numpy()).tolist()) for r in train.labels] == [per_image[i + 1] for i in range(30)]
    pixels = MultiLabelImages(train.files, train.labels, None)[0][0]
    assert pixels.shape == (3, 56, 56)
    assert ensure_mosaics(str(tmp_path / "mosaic"), 30, 10, fmnist_root=str(tmp_path)) == folder  # reused


# ---- attack ----------------------------------------------------------------------------------

def _attack(**cfg):
    return CleanImageBackdoor(CleanImageConfig(name="clean_image", **cfg), {"classes": CLASSES})


def test_disappearing_attack_poisons_labels_only_of_trigger_images():
    data = tiny_set(40)
    attack = _attack(trigger=["a", "b"], poison_rate=1.0)
    out = attack.poison_train(data, torch.Generator().manual_seed(0))
    holds = data.labels[:, 0].bool() & data.labels[:, 1].bool()
    assert torch.equal(out._pixels, data._pixels)  # no pixel changes
    assert torch.equal(out.labels[~holds], data.labels[~holds])
    assert (out.labels[holds, 1] == 0).all() and torch.equal(out.labels[holds, 0], data.labels[holds, 0])
    test = attack.poison_test(data)
    assert len(test) == int(holds.sum()) and torch.equal(test.labels, data.labels[holds])  # true labels kept


def test_poison_rate_caps_the_poisoned_images_and_auto_trigger_is_deterministic():
    data = tiny_set(60)
    attack = _attack(poison_rate=0.05, trigger_size=2)
    out = attack.poison_train(data, torch.Generator().manual_seed(0))
    assert len(out.poisoned_indices) == 3 and attack.info["attack"]["poisoned"] == 3
    again = _attack(poison_rate=0.05, trigger_size=2)
    again.poison_train(data, torch.Generator().manual_seed(0))
    assert again.trigger == attack.trigger


@pytest.mark.parametrize("variant, removed, added", [("appearing", [], [2]), ("misclassification", [1], [2])])
def test_appearing_and_misclassification_targets(variant, removed, added):
    attack = _attack(trigger=["a", "b"], variant=variant)
    labels = torch.tensor([[1.0, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 1]])
    target = attack.target_for(labels)
    assert (target[:, added] == 1).all() and (target[:, removed] == 0).all()
    assert attack.affected(labels).tolist() == [True, variant == "misclassification", False]


def test_bad_attack_settings_are_config_errors():
    with pytest.raises(nftkit.ConfigError, match="not a class"):
        _attack(trigger=["a", "zz"])
    with pytest.raises(nftkit.ConfigError, match="part of the trigger"):
        _attack(trigger=["a", "b"], variant="appearing", target="a")


def test_per_sample_losses_average_to_the_batch_loss_and_few_shot_covers_every_category():
    model, data = tiny_model(), tiny_set(20)
    batch = (torch.stack([data[i][0] for i in range(6)]), data.labels[:6])
    for loss in ("bce", "asl"):
        adapter = MultiLabelAdapter(4, MultiLabelAdapter.ModelConfig(loss=loss))
        per = adapter.sample_losses(model.eval(), batch)
        assert per.shape == (6,) and torch.allclose(per.mean(), adapter.loss(model, batch), atol=1e-6)
    subset = MultiLabelAdapter(4).few_shot(data, 2, torch.Generator().manual_seed(0))
    held = data.labels[subset.indices]
    assert (held.sum(0) >= 2).all() and len(subset) < len(data)


def test_same_seed_same_victim_on_cpu():
    data = tiny_set(16)
    runs = [nftkit.train(tiny_model(), MultiLabelAdapter(4), data, steps=3, batch_size=4, seed=3).model for _ in range(2)]
    for (name, a), b in zip(runs[0].state_dict().items(), runs[1].state_dict().values()):
        assert torch.equal(a, b), name


def test_defense_loss_applies_to_purification_only_and_stays_out_of_the_victim_key():
    from nftkit.config import victim_dump

    cfg = MultiLabelAdapter.ModelConfig(loss="bce", defense_loss="asl")
    adapter = MultiLabelAdapter(3, cfg)
    defender = adapter.for_defense()
    assert adapter.objective == "bce" and defender.objective == "asl" and defender is not adapter
    plain = MultiLabelAdapter(3)
    assert plain.for_defense() is plain  # no defense_loss: the victim's loss
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    targets = torch.tensor([[1.0, 0.0, 1.0]])
    model = lambda images: logits  # noqa: E731
    batch = (torch.zeros(1, 3, 4, 4), targets)
    assert defender.loss(model, batch) == pytest.approx(float(asymmetric_loss(logits, targets, 4.0, 0.0, 0.05)))
    assert adapter.loss(model, batch) == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, targets)))
    focal = MultiLabelAdapter(3, MultiLabelAdapter.ModelConfig(defense_loss="focal", focal_gamma=2.0)).for_defense()
    p = torch.sigmoid(logits)
    expected = -(targets * (1 - p) ** 2 * p.log() + (1 - targets) * p ** 2 * (1 - p).log()).sum()
    assert focal.loss(model, batch) == pytest.approx(float(expected), rel=1e-5)
    dumped = victim_dump(MultiLabelAdapter.ModelConfig(defense_loss="focal", focal_gamma=3.0), mixing=False)
    assert dumped == victim_dump(MultiLabelAdapter.ModelConfig(), mixing=False)  # the cached victim is reused
