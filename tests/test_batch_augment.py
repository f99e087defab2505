"""Multi-crop augmentation of whole batches on the device: each operation checked on its own."""

import json

import numpy as np
import pytest
import torch

from sslkd.config import load_config
from sslkd.data import get_dataset
from sslkd.data.batch_augment import BatchMultiCrop, rotate_hue
from sslkd.data.recipe import CropRecipe
from sslkd.train import Trainer

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _aug(**kw):
    base = dict(
        channels=3,
        mean=MEAN,
        std=STD,
        global_size=16,
        local_size=8,
        global_scale=(1.0, 1.0),
        local_number=0,
        flip_p=0.0,
        color_jitter_p=0.0,
        grayscale_p=0.0,
        blur_p=(0.0, 0.0, 0.0),
        solarize_p=0.0,
    )
    return BatchMultiCrop(CropRecipe(**(base | kw)))


def _images(n=6, size=16, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _unnorm(v):
    return v * torch.tensor(STD)[None, :, None, None] + torch.tensor(MEAN)[None, :, None, None]


def test_identity_settings_return_the_normalised_image():
    x = _images()
    views = _aug()(x, 3)
    assert len(views) == 2
    for v in views:
        torch.testing.assert_close(_unnorm(v), x.float() / 255, atol=1e-5, rtol=0)


def test_flip_and_deterministic_by_key():
    x = _images()
    torch.testing.assert_close(_unnorm(_aug(flip_p=1.0)(x, 0)[0]), x.float().flip(-1) / 255, atol=1e-5, rtol=0)
    a = BatchMultiCrop(CropRecipe(3, MEAN, STD, 16, 8, local_number=4))
    v1, v2, v3 = a(x, 7), a(x, 7), a(x, 8)
    assert all(torch.equal(p, q) for p, q in zip(v1, v2))
    assert not torch.equal(v1[0], v3[0])
    assert [tuple(v.shape) for v in v1] == [(6, 3, 16, 16)] * 2 + [(6, 3, 8, 8)] * 4


def test_crop_boxes_inside_image_with_area_in_range():
    a = _aug()
    g = torch.Generator().manual_seed(0)
    boxes = a.crop_boxes(g, 2000, 32, 32, (0.1, 0.4))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 32).all() and (boxes[:, 3] <= 32).all()
    share = w * h / 1024
    assert share.min() > 0.07 and share.max() < 0.45  # rounding of width/height around [0.1, 0.4]
    ratio = w / h
    assert ratio.min() > 0.6 and ratio.max() < 1.6


def test_brightness_scales_each_image_by_one_factor_in_range():
    x = (_images().float() * 0.5).to(torch.uint8)  # no clamping at 1 after x1.4
    out = _unnorm(_aug(color_jitter_p=1.0, brightness=0.4, contrast=0.0, saturation=0.0, hue=0.0)(x, 1)[0])
    ratio = out / (x.float() / 255).clamp_min(1e-6)
    for r, xi in zip(ratio, x):
        vals = r[xi > 20]
        assert vals.std() < 1e-3 and 0.6 - 1e-4 <= vals.mean() <= 1.4 + 1e-4


def test_grayscale_solarize_and_blur():
    x = _images()
    g = _unnorm(
        _aug(color_jitter_p=1.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, grayscale_p=1.0)(x, 0)[0]
    )
    torch.testing.assert_close(g[:, 0], g[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(g[:, 0], g[:, 2], atol=1e-5, rtol=0)
    s = _unnorm(_aug(solarize_p=1.0)(x, 0)[1])  # the second global crop only
    f = x.float() / 255
    torch.testing.assert_close(s, torch.where(f >= 128 / 255, 1 - f, f), atol=1e-5, rtol=0)
    big = _images(size=128)  # sigma scales with the crop (DINO's range is for 224 px): visible at 128
    fb = big.float() / 255
    b = _unnorm(_aug(global_size=128, blur_p=(1.0, 0.0, 0.0))(big, 0)[0])
    assert b.std() < fb.std() * 0.9 and abs(b.mean() - fb.mean()) < 0.01


def test_hue_rotation_keeps_luma_and_full_turn_is_identity():
    x = torch.rand(4, 3, 5, 5)
    y = rotate_hue(x, torch.tensor([0.3, 1.0, -0.5, 2.0]))
    luma = torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]
    torch.testing.assert_close((y * luma).sum(1), (x * luma).sum(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(rotate_hue(x, torch.full((4,), 2 * np.pi)), x, atol=1e-5, rtol=0)


def test_trainer_with_device_augmentation_resumes_the_same_views_and_learns(tmp_path):
    data = get_dataset("synthetic", "train", img_size=16, num_samples=64)
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path}",
            "method.name=dino",
            "model.depth=1",
            "method.out_dim=64",
            "method.hidden_dim=64",
            "method.bottleneck_dim=32",
            "train.batch_size=16",
            "train.epochs=6",
            "train.warmup_epochs=1",
            "train.freeze_last_layer=0",
            "model.drop_path_rate=0.0",
            "aug.local_crops_number=2",
            "device=cpu",
            "data.augment_on=device",
            "train.log_every=4",
            "train.base_lr=2e-3",
        ],
    )
    tr = Trainer(cfg, data, progress=False)
    whole = list(tr.batches(1, 0))
    later = list(tr.batches(1, 32))  # resuming at the third batch of epoch 1
    assert len(whole) == 4 and len(later) == 2 and len(whole[0]) == 4
    for a, b in zip(whole[2:], later):
        assert all(torch.equal(p, q) for p, q in zip(a, b))
    tr.fit()
    rec = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert np.mean([r["loss"] for r in rec[-3:]]) < np.mean([r["loss"] for r in rec[:3]])


def test_device_augmentation_is_a_config_choice_with_a_named_error():
    from sslkd.config import ConfigError

    with pytest.raises(ConfigError, match="data.augment_on"):
        load_config(None, ["data.augment_on=gpu"])
