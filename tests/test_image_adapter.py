import pytest
import torch

import nftkit
from nftkit.adapters.image import ImageClassificationAdapter, ImageTensorDataset


def _ds(n=20, classes=4, shape=(1, 8, 8)):
    return ImageTensorDataset(torch.rand(n, *shape), torch.arange(n) % classes)


@pytest.mark.parametrize("data, message", [
    (ImageTensorDataset(torch.rand(0, 1, 8, 8), torch.zeros(0)), "empty"),
    (ImageTensorDataset(torch.rand(6, 1, 8, 8), torch.zeros(6)), "single class"),
    (ImageTensorDataset(torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4, 9])), "out of range"),
    ([(torch.rand(1, 8, 8), 0), (torch.rand(1, 9, 9), 1)], "different shapes"),
    ([(torch.rand(8, 8), 0), (torch.rand(8, 8), 1)], "C x H x W"),
])
def test_bad_clean_sets_get_one_clear_error(data, message):
    with pytest.raises(nftkit.DataError, match=message):
        ImageClassificationAdapter(5).check_data(data)


def test_images_that_do_not_fit_the_model():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(144, 4))
    with pytest.raises(nftkit.ModelError, match="failed on a batch"):
        nftkit.purify(model, ImageClassificationAdapter(4), _ds(), steps=1)


def test_mix_augmentation_keeps_shapes_and_gives_soft_targets():
    adapter = ImageClassificationAdapter(4)
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 4
    g = torch.Generator().manual_seed(0)
    xm, t = adapter.augment((x, y), "mix", g)
    assert xm.shape == x.shape and t.shape == (16, 4)
    assert torch.allclose(t.sum(1), torch.ones(16))
    xb, yb = adapter.augment((x, y), "basic", torch.Generator().manual_seed(0))
    assert torch.equal(yb, y) and xb.shape == x.shape
    again = adapter.augment((x, y), "mix", torch.Generator().manual_seed(0))
    assert torch.equal(again[0], xm)


def test_cutmix_pastes_one_box_of_the_partner_and_mixes_targets_by_its_area():
    # image i is constant i, so each pixel tells whose it is; crop and flip are off so only the box moves pixels
    adapter = ImageClassificationAdapter(8, crop_padding=0, flip=False, mix="cutmix")
    x, y = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 1, 10, 10).contiguous(), torch.arange(8)
    boxes = 0
    for seed in range(5):
        xm, t = adapter.augment((x, y), "mix", torch.Generator().manual_seed(seed))
        for i in range(8):
            own = (xm[i] == i).float().mean()
            assert torch.isclose(t[i, i], own) or torch.equal(t[i], torch.nn.functional.one_hot(y[i], 8).float())
            pasted = xm[i][xm[i] != i]
            if len(pasted):
                partner = int(pasted[0])
                assert torch.all(pasted == partner) and torch.isclose(t[i, partner], 1 - own)
                rows, cols = (xm[i, 0] != i).nonzero().unbind(1)
                box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
                assert box == len(pasted)  # one solid rectangle
                boxes += 1
    assert boxes > 10
    assert ImageClassificationAdapter.from_recipe(ImageClassificationAdapter.DataConfig(mix="cutmix"), None).mix == "cutmix"


def test_mixup_or_cutmix_draws_either_per_batch():
    adapter = ImageClassificationAdapter(8, crop_padding=0, flip=False, mix="mixup_or_cutmix")
    x, y = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 1, 10, 10).contiguous(), torch.arange(8)
    kinds = []
    for seed in range(12):
        xm, _ = adapter.augment((x, y), "mix", torch.Generator().manual_seed(seed))
        kinds.append("cutmix" if torch.equal(xm, xm.round()) else "mixup")  # a box keeps whole values, a blend not
    assert 0 < kinds.count("cutmix") < 12


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_same_class_partners_mix_images_of_one_class_and_keep_the_labels(mix):
    # channels 0-2 hold the class one-hot, so they survive any same-class mix unchanged; channel 3 holds the
    # image's index, so it shows whether a row was mixed at all
    adapter = ImageClassificationAdapter(3, crop_padding=0, flip=False, mix=mix, mix_partner="same_class")
    y = torch.arange(12) % 3
    x = torch.cat([torch.nn.functional.one_hot(y, 3).float(), torch.arange(12.0).unsqueeze(1)], 1)
    x = x.view(12, 4, 1, 1).expand(12, 4, 6, 6).contiguous()
    mixed_rows = 0
    for seed in range(4):
        xm, t = adapter.augment((x, y), "mix", torch.Generator().manual_seed(seed))
        assert torch.equal(t, torch.nn.functional.one_hot(y, 3).float())
        assert torch.equal(xm[:, :3], x[:, :3])
        mixed_rows += int((xm[:, 3] != x[:, 3]).flatten(1).any(1).sum())
    assert mixed_rows > 20
    assert ImageClassificationAdapter.from_recipe(ImageClassificationAdapter.DataConfig(mix_partner="same_class"),
                                                  None).mix_partner == "same_class"
    any_class = ImageClassificationAdapter(3, crop_padding=0, flip=False, mix=mix)
    assert not torch.equal(any_class.augment((x, y), "mix", torch.Generator().manual_seed(0))[0][:, :3], x[:, :3])


def test_any_map_style_dataset_of_pairs_works():
    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, i):
            return torch.full((1, 8, 8), i / 12), i % 3

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    result = nftkit.purify(model, ImageClassificationAdapter(3), Pairs(), steps=2, batch_size=4)
    assert list(result.masks) == ["1"]
