"""Hugging Face datasets as an image source (``data.name: hf``), on datasets the tests write:
a ``save_to_disk`` folder and a folder of Parquet files, read in memory and lazily; bad rows
under ``data.on_corrupt``; ``sslkd pretrain --data`` and ``sslkd eval knn`` on them."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from sslkd.cli import main
from sslkd.config import load_config
from sslkd.data import get_dataset, held_out
from sslkd.data.folder import CorruptImageError
from sslkd.data.hf import HFImages, header_sides, is_hf
from sslkd.data.registry import labelled_splits
from sslkd.errors import ConfigError, DatasetError
from sslkd.lazy import optional_import
from sslkd.schema import to_dict
from sslkd.train.monitor import Monitor

hfd = pytest.importorskip("datasets")


def encoded(a: np.ndarray, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.fromarray(a).save(out, fmt)
    return out.getvalue()


def rows(n: int, classes: int, size=(12, 12), gray=False, seed=0) -> tuple[list[np.ndarray], list[int]]:
    """Images whose mean brightness says their class (kNN can learn it) and their labels."""
    rng = np.random.default_rng(seed)
    shape = size[::-1] if gray else (*size[::-1], 3)
    labels = [i % classes for i in range(n)]
    images = [(rng.integers(0, 60, shape) + 180 * (y / max(1, classes - 1))).astype(np.uint8) for y in labels]
    return images, labels


def saved(tmp_path, splits=("train", "validation"), n=(40, 20), size=(12, 12)):
    """A DatasetDict saved with save_to_disk: an Image column 'img', a ClassLabel 'y', a text column."""
    feats = hfd.Features(
        {"img": hfd.Image(), "y": hfd.ClassLabel(names=["dark", "mid", "light"]), "text": hfd.Value("string")}
    )
    made, parts = {}, {}
    for split, count, seed in zip(splits, n, range(len(splits))):
        images, labels = rows(count, 3, size, seed=seed)
        made[split] = (images, labels)
        cells = [{"bytes": encoded(a), "path": None} for a in images]
        parts[split] = hfd.Dataset.from_dict({"img": cells, "y": labels, "text": ["x"] * count}, features=feats)
    hfd.DatasetDict(parts).save_to_disk(str(tmp_path / "saved"))
    return tmp_path / "saved", made


def test_save_to_disk_round_trip_in_memory_and_lazily(tmp_path):
    root, made = saved(tmp_path)
    assert is_hf(root)
    train = get_dataset("hf", "train", root=str(root))  # small, one size: decoded into memory
    assert not getattr(train, "lazy", False) and train.classes == ["dark", "mid", "light"]
    np.testing.assert_array_equal(train.images, np.stack(made["train"][0]))  # PNG: lossless, in order
    np.testing.assert_array_equal(train.labels, made["train"][1])
    test = held_out("hf", train, root=str(root))  # 'validation' found as the held-out split
    np.testing.assert_array_equal(test.images, np.stack(made["validation"][0]))
    lazy = get_dataset("hf", "train", root=str(root), in_memory=False)
    assert isinstance(lazy, HFImages) and lazy.num_channels == 3 and len(lazy) == 40
    np.testing.assert_array_equal(lazy[7][0].permute(1, 2, 0).numpy(), made["train"][0][7])
    part = lazy.subset(np.array([5, 2]))
    np.testing.assert_array_equal(part[1][0].permute(1, 2, 0).numpy(), made["train"][0][2])
    assert part.labels.tolist() == [made["train"][1][5], made["train"][1][2]]
    assert isinstance(held_out("hf", lazy, root=str(root)), HFImages)  # read as the training split was
    assert header_sides(str(root)) == ([12] * 40, 40)


def test_parquet_folder_with_integer_labels_and_gray_images(tmp_path):
    root = tmp_path / "pq"
    root.mkdir()
    for split, n, values in (("train", 30, [3, 7, 9]), ("test", 9, [9, 3, 7])):
        images, idx = rows(n, 3, gray=True)
        labels = [values[i] for i in idx]
        cells = [{"bytes": encoded(a), "path": None} for a in images]
        feats = hfd.Features({"image": hfd.Image(), "label": hfd.Value("int64")})
        hfd.Dataset.from_dict({"image": cells, "label": labels}, features=feats).to_parquet(
            str(root / f"{split}-0.parquet")
        )
    train = get_dataset("hf", "train", root=str(root))
    assert train.classes == ["3", "7", "9"] and train.num_channels == 1
    assert train.labels[:3].tolist() == [0, 1, 2]
    test = held_out("hf", train, root=str(root))
    assert test.labels[:3].tolist() == [2, 0, 1]  # 9, 3, 7 by the training classes' names
    unlabelled = get_dataset("hf", "train", root=str(root), options={"label_key": "none"})
    assert unlabelled.num_classes == 0 and (unlabelled.labels == -1).all()
    lazy = get_dataset("hf", "train", root=f"hf:{root}", in_memory=False)  # the --data spelling works as a root
    assert lazy.num_channels == 1 and len(lazy.mean) == len(lazy.std) == 1  # gray statistics, not RGB's
    assert lazy[0][0].shape == (1, 12, 12)


def test_unlabelled_rows_stay_unlabelled_and_evaluations_leave_them_out(tmp_path):
    images, _ = rows(12, 2)
    cells = [{"bytes": encoded(a), "path": None} for a in images]
    for kind, feature in (("int", hfd.Value("int64")), ("classlabel", hfd.ClassLabel(names=["a", "b"]))):
        root = tmp_path / kind
        labels = {"train": [0, 1, -1] * 4, "test": [1, -1, 0] * 4}
        for split, y in labels.items():
            feats = hfd.Features({"image": hfd.Image(), "label": feature})
            table = hfd.Dataset.from_dict({"image": cells, "label": y}, features=feats)
            table.to_parquet(str(root / f"{split}-0.parquet"))
        train = get_dataset("hf", "train", root=str(root))
        test = held_out("hf", train, root=str(root))
        assert train.labels.tolist() == labels["train"] and test.labels.tolist() == labels["test"]  # -1 is not a class
        with pytest.warns(UserWarning, match="4 unlabelled image"):
            train, test = labelled_splits("hf", root=str(root))
        assert len(train) == len(test) == 8 and (train.labels >= 0).all() and (test.labels >= 0).all()
    # the training run's monitor scores without them too (a -1 neighbour would be a wrong vote)
    keys = [f"data.root={root}", "data.name=hf", "model.depth=1", "train.epochs=1", "eval.knn_every=1"]
    cfg = load_config(None, keys)
    monitor = Monitor(cfg, get_dataset("hf", "train", root=str(root)), None, torch.device("cpu"))
    with pytest.warns(UserWarning, match="unlabelled image"):
        assert monitor.due(1)
    assert [len(s) for s in monitor.scored] == [8, 8] and all((s.labels >= 0).all() for s in monitor.scored)


def test_clear_errors(tmp_path):
    root, _ = saved(tmp_path, splits=("train",), n=(6,))
    with pytest.raises(DatasetError, match=r"no split 'pretrain' \(it has train\)"):
        get_dataset("hf", "train", root=str(root), options={"train_split": "pretrain"})
    with pytest.raises(DatasetError, match="no held-out split"):
        held_out("hf", get_dataset("hf", "train", root=str(root)), root=str(root))
    with pytest.raises(DatasetError, match=r"no column 'picture' \(columns: img, y, text\)"):
        get_dataset("hf", "train", root=str(root), options={"image_key": "picture"})
    with pytest.raises(DatasetError, match="column 'text' holds .*not images"):
        get_dataset("hf", "train", root=str(root), options={"image_key": "text"})
    with pytest.raises(DatasetError, match="missing/folder is not a dataset folder"):
        get_dataset("hf", "train", root=str(tmp_path / "missing" / "folder"))
    with pytest.raises(DatasetError, match=r"is not a dataset folder \(save_to_disk, Parquet or Arrow files\)"):
        get_dataset("hf", "train", root=str(root / "train" / "dataset_info.json"))  # a file, not a folder
    with pytest.raises(ConfigError, match="unknown config key 'data.options.imagekey'; did you mean image_key"):
        load_config(overrides=["data.name=hf", "data.options.imagekey=img"])
    with pytest.raises(ConfigError, match="dataset 'cifar10' takes no options"):
        load_config(overrides=["data.name=cifar10", "data.options.image_key=img"])
    assert load_config(overrides=["data.name=hf", "data.options.channels=1"]).data.options.channels == 1
    for name in ("digits", "hf"):  # a saved config (data.options: null or a section) reads back, and can switch
        cfg = load_config(overrides=[f"data.name={name}"])
        assert load_config(base=to_dict(cfg)).data.options == cfg.data.options
    assert load_config(base=to_dict(cfg), overrides=["data.name=digits", "data.options=null"]).data.name == "digits"
    with pytest.raises(
        ModuleNotFoundError, match=r"data.name=hf needs the 'no_such_pkg' package: pip install 'sslkd\[hf\]'"
    ):
        optional_import("no_such_pkg", "hf", "data.name=hf").load_from_disk  # noqa: B018


def test_bad_rows_follow_on_corrupt(tmp_path):
    images, labels = rows(8, 2)
    cells = [{"bytes": encoded(a), "path": None} for a in images]
    cells[3] = {"bytes": b"not an image", "path": None}
    feats = hfd.Features({"image": hfd.Image(), "label": hfd.ClassLabel(names=["a", "b"])})
    hfd.Dataset.from_dict({"image": cells, "label": labels}, features=feats).save_to_disk(str(tmp_path / "one"))
    root = str(tmp_path / "one")  # one Dataset, not a dict: its training split
    lazy = get_dataset("hf", "train", root=root, in_memory=False)
    with pytest.raises(CorruptImageError, match=r"cannot decode hf:.*one\[train\]#3"):
        lazy[3]
    with pytest.raises(DatasetError, match=r"#3.*\(1 in all\); --set data.on_corrupt=skip"):
        get_dataset("hf", "train", root=root, in_memory=True)
    kept = get_dataset("hf", "train", root=root, in_memory=True, on_corrupt="skip")
    assert len(kept) == 7 and kept.skipped == 1


def test_pretrain_from_the_command_line_then_knn(tmp_path, capsys):
    root, _ = saved(tmp_path, splits=("train", "holdout"), n=(64, 30), size=(16, 16))
    out = tmp_path / "run"
    common = ["--no-progress", "--set", "train.max_steps=3", "--set", "model.depth=1", "--set", "data.num_workers=0"]
    lazily = ["--set", "data.in_memory=false", "--set", "data.options.test_split=holdout"]
    assert main(["pretrain", "--method", "dino", "--data", str(root), "--out", str(out), *common, *lazily]) == 0
    saved_cfg = load_config(out / "config.yaml")
    assert saved_cfg.data.name == "hf" and saved_cfg.data.options.test_split == "holdout"
    assert (out / "checkpoint-3.pt").is_file()
    more = [a if a != "train.max_steps=3" else "train.max_steps=5" for a in common]
    assert main(["pretrain", "--method", "dino", "--data", str(root), "--out", str(out), *more, *lazily]) == 0
    assert "resumed from" in capsys.readouterr().out and (out / "checkpoint-5.pt").is_file()
    capsys.readouterr()
    # the run's data.options (its held-out split's name) carry over to its evaluation
    assert main(["eval", "knn", str(out), "--dataset", "hf", "--root", str(root), "--json", "--workers", "0"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["dataset"], result["train_images"], result["test_images"]) == ("hf", 64, 30)
    assert result["top1"] > 50  # brightness says the class: well above chance (33 %) even after 3 steps
