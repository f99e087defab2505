import torch

from sslkd.config import AugConfig
from sslkd.data import get_dataset
from sslkd.data.augment import MultiCropDataset, MultiCropTransform, SeededEpochSampler


def test_multicrop_shapes_rgb32_and_gray28():
    aug = AugConfig(local_crops_number=3)
    rgb = MultiCropTransform.from_config(aug, 32, 3, (0.5,) * 3, (0.25,) * 3)
    crops = rgb(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))
    assert [tuple(c.shape) for c in crops] == [(3, 32, 32)] * 2 + [(3, 14, 14)] * 3
    assert all(c.dtype == torch.float32 for c in crops)
    aug = AugConfig(local_crops_number=2, local_crops_size=12)
    gray = MultiCropTransform.from_config(aug, 28, 1, (0.3,), (0.3,))
    crops = gray(torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8))
    assert [tuple(c.shape) for c in crops] == [(1, 28, 28)] * 2 + [(1, 12, 12)] * 2


def test_views_depend_only_on_seed_and_leave_global_rng_alone():
    ds = get_dataset("synthetic", "train", img_size=16, num_samples=20)
    t = MultiCropTransform.from_config(AugConfig(local_crops_number=1), 16, 3, ds.mean, ds.std)
    mc = MultiCropDataset(ds, t)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a, _, seed, bad = mc[(3, 42)]
    assert bad == "" and seed == 42
    assert torch.equal(torch.get_rng_state(), state)
    b, _, _, _ = mc[(3, 42)]
    c, _, _, _ = mc[(3, 43)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[1])  # the two global views differ


def test_sampler_is_a_function_of_seed_epoch_and_resumes():
    full = list(SeededEpochSampler(10, seed=0, epoch=2))
    assert sorted(i for i, _ in full) == list(range(10))
    assert list(SeededEpochSampler(10, seed=0, epoch=2, start=4)) == full[4:]
    assert [i for i, _ in SeededEpochSampler(10, seed=0, epoch=3)] != [i for i, _ in full]
    shards = [list(SeededEpochSampler(10, 0, 2, rank=r, world_size=2)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == sorted(full)
