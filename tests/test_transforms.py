import numpy as np
import pytest
import torch

from research.data.augment import AUGMENT_PRESETS, resolve_augment
from research.data.transforms import build_eval_transform, build_train_transform
from research.models.classifier import IMAGENET_MEAN, IMAGENET_STD


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("preset", sorted(AUGMENT_PRESETS))
@pytest.mark.parametrize("shape", [(50, 50, 3), (30, 90, 3), (120, 40, 3)])
def test_shapes_and_dtype(channels, preset, shape):
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))
    img = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    for t in (
        build_train_transform(40, channels=channels, mean=mean, std=std, augment=AUGMENT_PRESETS[preset], seed=0),
        build_eval_transform(40, channels=channels, mean=mean, std=std),
    ):
        x = t(image=img)["image"]
        assert x.shape == (channels, 40, 40) and x.dtype == torch.float32


def test_eval_is_deterministic_and_keeps_aspect_ratio():
    t = build_eval_transform(32, channels=3, mean=(0, 0, 0), std=(1, 1, 1))
    img = np.full((20, 60, 3), 255, np.uint8)  # wide white image
    a, b = t(image=img)["image"], t(image=img)["image"]
    assert torch.equal(a, b)
    # padded top and bottom with black, not stretched
    assert a[:, 0, :].max() == 0 and a[:, 16, :].min() == pytest.approx(1.0)


def test_train_seeded_reproducible_and_random():
    img = np.random.default_rng(1).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    t = build_train_transform(48, channels=1, mean=(0.5,), std=(0.5,), augment=AUGMENT_PRESETS["strong"], seed=5)
    t.set_random_seed(5)
    first = [t(image=img)["image"] for _ in range(3)]
    t.set_random_seed(5)
    again = [t(image=img)["image"] for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1])


def test_no_vertical_flip_or_hue_ops():
    t = build_train_transform(32, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD, augment=AUGMENT_PRESETS["strong"])
    names = {type(op).__name__ for op in t.transforms}
    assert "VerticalFlip" not in names and "HueSaturationValue" not in names and "ColorJitter" not in names


def test_overrides_and_validation():
    p = resolve_augment("light", rotate_limit=25, hflip_p=None)
    assert p.rotate_limit == 25 and p.hflip_p == AUGMENT_PRESETS["light"].hflip_p
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        resolve_augment("extreme")
    with pytest.raises(ValueError, match="out of range"):
        resolve_augment("light", hflip_p=1.5)


def test_mean_std_length_checked():
    with pytest.raises(ValueError, match="mean/std need 1 values"):
        build_eval_transform(32, channels=1, mean=IMAGENET_MEAN, std=IMAGENET_STD)
