import gzip
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslkd.data import DatasetError, get_dataset
from sslkd.data import cifar as cifar_mod
from sslkd.data.download import md5sum
from sslkd.data.idx import DEBIAN_ROOT


def make_cifar10(root: Path, n_per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = list(rng.integers(0, 10, n_per_batch))
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": [int(x) for x in labels], b"batch_label": b"x"}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return folder


def test_cifar10_pickle_layout(tmp_path):
    folder = make_cifar10(tmp_path)
    train = get_dataset("cifar10", "train", root=tmp_path)
    test = get_dataset("cifar10", "test", root=folder)  # the batches folder itself works too
    assert train.images.shape == (20, 32, 32, 3) and train.images.dtype == np.uint8
    assert len(test) == 4 and train.classes[3] == "c3"
    with open(folder / "data_batch_2", "rb") as f:
        raw = pickle.load(f)
    # channel-planar rows -> HWC pixels
    np.testing.assert_array_equal(train.images[4, :, :, 1], raw[b"data"][0, 1024:2048].reshape(32, 32))
    img, label = train[4]
    assert img.shape == (3, 32, 32) and label == raw[b"labels"][0]


def test_cifar_truncated_and_malicious_pickles_are_named(tmp_path):
    folder = make_cifar10(tmp_path)
    path = folder / "data_batch_3"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DatasetError, match="data_batch_3.*truncated"):
        get_dataset("cifar10", "train", root=tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DatasetError, match="refusing to load builtins.print"):
        get_dataset("cifar10", "train", root=tmp_path)


def test_cifar_download_verifies_checksum(tmp_path, monkeypatch):
    src = tmp_path / "src"
    make_cifar10(src)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    spec = dict(cifar_mod.ARCHIVES["cifar10"], url=archive.as_uri(), md5=md5sum(archive))
    monkeypatch.setitem(cifar_mod.ARCHIVES, "cifar10", spec)
    ds = get_dataset("cifar10", "train", root=tmp_path / "dl", download=True)
    assert len(ds) == 20
    monkeypatch.setitem(cifar_mod.ARCHIVES, "cifar10", dict(spec, md5="0" * 32))
    with pytest.raises(DatasetError, match="checksum mismatch"):
        get_dataset("cifar10", "train", root=tmp_path / "dl2", download=True)
    with pytest.raises(DatasetError, match="does not exist|no root"):
        get_dataset("cifar10", "train", root=tmp_path / "nothing")


def write_idx(path: Path, arr: np.ndarray, gz: bool):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx(tmp_path, gz):
    rng = np.random.default_rng(0)
    imgs, labs = rng.integers(0, 256, (7, 28, 28)), rng.integers(0, 10, 7)
    sfx = ".gz" if gz else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", imgs, gz)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", labs, gz)
    ds = get_dataset("fashion-mnist", "test", root=tmp_path)
    assert ds.images.shape == (7, 28, 28, 1) and ds.num_channels == 1
    np.testing.assert_array_equal(ds.images[..., 0], imgs)
    np.testing.assert_array_equal(ds.labels, labs)
    bad = tmp_path / f"t10k-images-idx3-ubyte{sfx}"
    write_idx(bad, imgs, False) if not gz else None
    raw = gzip.decompress(bad.read_bytes()) if gz else bad.read_bytes()
    bad.write_bytes(gzip.compress(raw[:-10]) if gz else raw[:-10])
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.*truncated"):
        get_dataset("fashion-mnist", "test", root=tmp_path)
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte"):
        get_dataset("fashion-mnist", "train", root=tmp_path)


@pytest.mark.skipif(not DEBIAN_ROOT.is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_fashion_mnist_debian_copy_found_without_root():
    ds = get_dataset("fashion-mnist", "test")
    assert ds.images.shape == (10000, 28, 28, 1)
    assert np.bincount(ds.labels).tolist() == [1000] * 10


def make_folder(root: Path, sizes=((8, 8),), per_class=3, mode="RGB"):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            arr = rng.integers(0, 256, (h, w, 3 if mode == "RGB" else 1), dtype=np.uint8)
            Image.fromarray(arr.squeeze()).save(root / c / f"{i}.png")


def test_imagefolder_reads_caches_and_reports(tmp_path):
    make_folder(tmp_path / "data" / "train")
    ds = get_dataset("imagefolder", "train", root=tmp_path / "data")
    assert ds.images.shape == (6, 8, 8, 3) and ds.classes == ["cat", "dog"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(ds.images[0], np.asarray(Image.open(tmp_path / "data/train/cat/0.png")))
    again = get_dataset("imagefolder", "train", root=tmp_path / "data")  # from the cache
    np.testing.assert_array_equal(again.images, ds.images)
    (tmp_path / "data/train/dog/9.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot decode .*dog/9\.png"):
        get_dataset("imagefolder", "train", root=tmp_path / "data")
    with pytest.warns(UserWarning, match="skipped 1 corrupt"):
        skipped = get_dataset("imagefolder", "train", root=tmp_path / "data", on_corrupt="skip")
    assert len(skipped) == 6 and skipped.skipped == 1


def test_imagefolder_errors_name_the_path(tmp_path):
    with pytest.raises(DatasetError, match="missing.*does not exist"):
        get_dataset("imagefolder", "train", root=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no image files .*empty"):
        get_dataset("imagefolder", "train", root=tmp_path / "empty")
    make_folder(tmp_path / "mixed", sizes=((8, 8), (12, 10)))
    with pytest.raises(DatasetError, match="mixes image sizes"):
        get_dataset("imagefolder", "train", root=tmp_path / "mixed", in_memory=True)
    ds = get_dataset("imagefolder", "train", root=tmp_path / "mixed", img_size=8, in_memory=True)
    assert ds.images.shape == (6, 8, 8, 3)
    make_folder(tmp_path / "split" / "train")  # split folders but no test/: not the training images
    with pytest.raises(DatasetError, match=r"split/val or .*split/test does not exist"):
        get_dataset("imagefolder", "test", root=tmp_path / "split")
    make_folder(tmp_path / "flat")  # a flat tree has no test split: training images are not one
    with pytest.raises(DatasetError, match="no held-out split"):
        get_dataset("imagefolder", "test", root=tmp_path / "flat")


def test_imagenet32_npz_and_balanced_subset(tmp_path):
    rng = np.random.default_rng(0)
    for b in (1, 2):
        labels = np.repeat(np.arange(1, 6), 20)  # classes 1..5, 20 each
        np.savez(
            tmp_path / f"train_data_batch_{b}.npz",
            data=rng.integers(0, 256, (100, 3072), dtype=np.uint8),
            labels=labels,
        )
    full = get_dataset("imagenet32", "train", root=tmp_path)
    assert full.images.shape == (200, 32, 32, 3) and full.labels.min() == 0 and full.num_classes == 5
    sub = get_dataset("imagenet32", "train", root=tmp_path, subset_fraction=0.1, seed=3)
    assert np.bincount(sub.labels).tolist() == [4] * 5
    sub2 = get_dataset("imagenet32", "train", root=tmp_path, subset_fraction=0.1, seed=3)
    np.testing.assert_array_equal(sub.images, sub2.images)
    (tmp_path / "train_data_batch_2.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DatasetError, match="train_data_batch_2.npz"):
        get_dataset("imagenet32", "train", root=tmp_path)


def test_digits_synthetic_and_unknown():
    tr, te = get_dataset("digits", "train"), get_dataset("digits", "test")
    assert len(tr) + len(te) == 1797 and tr.images.shape[1:] == (16, 16, 1)
    assert set(np.unique(te.labels)) == set(range(10))
    a = get_dataset("synthetic", "train", img_size=16, num_samples=50)
    b = get_dataset("synthetic", "train", img_size=16, num_samples=50)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.shape == (50, 16, 16, 3)
    sub = get_dataset("synthetic", "train", subset_fraction=0.5, num_samples=100)
    assert np.bincount(sub.labels).tolist() == [5] * 10
    with pytest.raises(DatasetError, match="unknown dataset 'cifar11'.*cifar10"):
        get_dataset("cifar11")
