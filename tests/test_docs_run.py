"""Every ``sslkd`` command in the docs runs, in the order the pages give them, as a user would type
it in a checkout: from a working folder holding ``configs/``, with ``../shared/data/cifar10`` and
Fashion-MNIST present. Only the budget is ours: a tiny CIFAR-10 image tree and Fashion-MNIST
(12 train / 6 test images a class), one or two training steps, a few probe epochs. Paths, flags,
config keys, run folders that one command writes and the next reads: all as documented."""

import gzip
import shlex
import struct

import datasets as hfd
import numpy as np
import torch
from PIL import Image
from test_docs import ROOT, _commands

from sslkd.cli import main

PAGES = [
    "index.md",
    "data.md",
    "dino.md",
    "ibot.md",
    "evaluation.md",
    "export-report.md",
    "seed.md",
    "howto-distill.md",
    "mocov3.md",
    "mae.md",
    "dmt.md",
    "mokd.md",
]  # producers before consumers (DMT reads the teachers)


def _budget(args: list[str]) -> list[str]:
    """What we add to a documented command so that it finishes in seconds."""
    cmd = args[0]
    if cmd in ("pretrain", "distill"):
        return [
            "--no-progress",
            "--set",
            "train.max_steps=1",
            "--set",
            "train.batch_size=16",
            "--set",
            "eval.knn_every=0",
            "--set",
            "data.num_workers=0",
        ]
    if cmd == "demo":
        return ["--no-progress", "--set", "train.max_steps=2"]
    if cmd == "experiment":
        return [
            "--no-progress",
            "--max-steps",
            "1",
            "--linear-epochs",
            "2",
            "--eval-train-samples",
            "60",
            "--eval-test-samples",
            "30",
            "--set",
            "train.batch_size=16",
            "--set",
            "data.num_workers=0",
        ]
    if args[:2] == ["eval", "linear"]:
        return ["--epochs", "2"]
    if args[:2] == ["eval", "finetune"]:
        return ["--epochs", "1", "--warmup-epochs", "0"]
    return []


def _idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def hf_tiny_cifar(tree, out) -> None:
    """data.md's Hugging Face dataset: the tiny CIFAR-10 tree as a ``save_to_disk`` DatasetDict."""
    classes = sorted(p.name for p in (tree / "train").iterdir())
    feats = hfd.Features({"img": hfd.Image(), "label": hfd.ClassLabel(names=classes)})
    splits = {}
    for split in ("train", "test"):
        files = [(f, c) for c, name in enumerate(classes) for f in sorted((tree / split / name).iterdir())]
        cells = [{"bytes": f.read_bytes(), "path": None} for f, _ in files]
        splits[split] = hfd.Dataset.from_dict({"img": cells, "label": [c for _, c in files]}, features=feats)
    hfd.DatasetDict(splits).save_to_disk(str(out))


def _sandbox(root, monkeypatch):
    rng = np.random.default_rng(0)
    work = root / "work"
    work.mkdir()
    (work / "configs").symlink_to(ROOT / "configs")
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for split, n in (("train", 12), ("test", 6)):
        for c, name in enumerate(classes):
            folder = root / "shared" / "data" / "cifar10" / split / name
            folder.mkdir(parents=True)
            for i in range(n):  # a class-dependent colour plus noise: something to learn
                img = np.clip(rng.normal(25 * c, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i:04d}.jpg")
    fashion = root / "home" / ".cache" / "sslkd" / "fashion-mnist"
    fashion.mkdir(parents=True)
    for prefix, n in (("train", 120), ("t10k", 60)):
        labels = np.arange(n) % 10
        _idx(
            fashion / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)) // (1 + labels[:, None, None])
        )
        _idx(fashion / f"{prefix}-labels-idx1-ubyte.gz", labels)
    # data.md's folders: unlabelled photos of many sizes (nested), and an ImageNet-layout tree
    for i in range(20):
        w, h = (int(v) for v in rng.integers(60, 200, 2))
        path = root / "home" / "photos" / ("2024/trip" if i % 3 else "") / f"IMG_{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    for split, n in (("train", 8), ("val", 4)):
        for c in ("n01440764", "n01443537"):
            folder = root / "home" / "imagenet" / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                w, h = (int(v) for v in rng.integers(60, 200, 2))
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG")
    hf_tiny_cifar(root / "shared" / "data" / "cifar10", root / "home" / "cifar10-hf")
    monkeypatch.setenv("HOME", str(root / "home"))
    monkeypatch.setattr("sslkd.data.idx.DEBIAN_ROOT", root / "no-debian-copy")
    # the how-to's external teacher: a ViT-S/8 in DINO's own checkpoint layout
    import timm

    vit = timm.create_model("vit_small_patch8_224", pretrained=False, num_classes=0)
    torch.save(
        {"teacher": {f"backbone.{k}": v for k, v in vit.state_dict().items()}},
        work / "dino_vitsmall8_pretrain_full_checkpoint.pth",
    )
    monkeypatch.chdir(work)
    return work


def test_every_docs_command_runs(tmp_path, monkeypatch):
    commands = sorted(_commands(), key=lambda pc: PAGES.index(pc[0]) if pc[0] in PAGES else len(PAGES))
    assert {p for p, _ in commands} <= set(PAGES), "a docs page with commands is missing from PAGES"
    work = _sandbox(tmp_path, monkeypatch)
    torch.manual_seed(0)
    for page, line in commands:
        args = shlex.split(line)[1:]
        try:
            code = main(args + _budget(args))
        except SystemExit as e:
            code = e.code
        assert code in (0, None), f"{page}: `{line}` exited with {code}"
    # what the commands promised to write
    assert (work / "report.html").stat().st_size > 10_000
    assert (work / "export" / "vit_tiny_kd" / "model.safetensors").is_file()
    table4 = (work / "runs" / "dmt_table4" / "table4.md").read_text()  # DMT from teachers the docs made
    for row in ("Random init", "DMT from iBOT + MoCo v3 + MAE", "DMT from iBOT", "DMT from MoCo v3", "DMT from MAE"):
        assert f"| {row} |" in table4, row
    assert "Fine-tune Acc@1" in table4
    table7 = (work / "runs" / "mokd_table7_cpu" / "table7.md").read_text()
    for row in ("independent (L_sm)", "L_sm + L_cm", "L_sm + L_cm + L_st", "MOKD (all terms)"):
        for model in ("resnet18 (model 1)", "vit_tiny (model 2)"):  # compare evaluates both models of a run
            assert f"| {row}: {model} |" in table7, (row, model)
