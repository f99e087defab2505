"""Folders of real-looking photos: mixed sizes, modes and formats, EXIF, unlabelled trees, bad files."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslkd.cli import main
from sslkd.config import AugConfig
from sslkd.data import DatasetError, get_dataset
from sslkd.data import folder as folder_mod
from sslkd.data.augment import MultiCropTransform
from sslkd.data.batch_augment import rotate_hue
from sslkd.data.folder import CorruptImageError, EvalCrops, ImageFolderDataset, decode, scan_folder
from sslkd.data.pil_augment import PILMultiCrop, shift_hue
from sslkd.data.recipe import CropRecipe


def _rgb(rng, w, h):
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def write_photo(path: Path, kind: str, w: int, h: int, rng) -> None:
    """One file of ``kind``: jpg, png, webp, gray, rgba, palette, cmyk, 16bit, exif."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = _rgb(rng, w, h)
    if kind == "jpg":
        im.save(path.with_suffix(".jpg"), quality=85)
    elif kind == "png":
        im.save(path.with_suffix(".png"))
    elif kind == "webp":
        im.save(path.with_suffix(".webp"))
    elif kind == "gray":
        im.convert("L").save(path.with_suffix(".png"))
    elif kind == "rgba":
        im.convert("RGBA").save(path.with_suffix(".png"))
    elif kind == "palette":
        im.convert("P").save(path.with_suffix(".gif"))
    elif kind == "cmyk":
        im.convert("CMYK").save(path.with_suffix(".jpg"))
    elif kind == "16bit":
        Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16)).save(path.with_suffix(".png"))
    elif kind == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
        im.save(path.with_suffix(".jpg"), exif=exif)


def make_flat(root: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        write_photo(root / f"{i}", "jpg", 50, 40, rng)
    return root


KINDS = ("jpg", "png", "webp", "gray", "rgba", "palette", "cmyk", "16bit", "exif")


def make_tree(root: Path, classes=("cat", "dog"), per_class=9, seed=0) -> None:
    """``root/<class>/...`` with every kind of file, sizes between 40 and 90 px."""
    rng = np.random.default_rng(seed)
    for c in classes:
        for i in range(per_class):
            w, h = (int(v) for v in rng.integers(40, 91, 2))
            write_photo(root / c / f"{i:03d}", KINDS[i % len(KINDS)], w, h, rng)


def test_every_mode_decodes_to_8bit_with_orientation_applied(tmp_path):
    rng = np.random.default_rng(0)
    for kind in KINDS:
        write_photo(tmp_path / kind, kind, 40, 20, rng)
    files = {p.stem: p for p in tmp_path.iterdir()}
    for kind, p in files.items():
        im = decode(p, 3)
        assert im.mode == "RGB", kind
        assert im.size == ((20, 40) if kind == "exif" else (40, 20)), kind  # EXIF 6: portrait
    # 16-bit is scaled, not clipped: 65535 -> 255, 257 -> 1
    Image.fromarray(np.array([[65535, 257]], dtype=np.uint16)).save(tmp_path / "w.png")
    assert np.asarray(decode(tmp_path / "w.png", 1)).tolist() == [[255, 1]]
    # float TIFFs span their own range (0-1 reflectance was near-black; 0-4095 was clipped white)
    for peak in (1.0, 4095.0):
        Image.fromarray(np.array([[0.0, peak / 2, peak]], dtype=np.float32), "F").save(tmp_path / "f.tif")
        assert np.asarray(decode(tmp_path / "f.tif", 1)).tolist() == [[0, 128, 255]], peak
    # transparent pixels are composited on white, not black
    Image.new("RGBA", (2, 2), (0, 0, 0, 0)).save(tmp_path / "t.png")
    assert np.asarray(decode(tmp_path / "t.png", 3)).min() == 255
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(CorruptImageError, match="bad.jpg"):
        decode(tmp_path / "bad.jpg", 3)
    ds = ImageFolderDataset(scan_folder(tmp_path, labels="none", use_cache=False), 3)
    (tmp_path / "png.png").unlink()  # deleted after the scan (mid-run): the same case as corrupt
    with pytest.raises(CorruptImageError, match="png.png"):
        ds[[Path(ds.path(i)).name for i in range(len(ds))].index("png.png")]
    full = (tmp_path / "jpg.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(full[: len(full) // 2])  # truncated: corrupt, not silently grey
    with pytest.raises(CorruptImageError, match="cut.jpg"):
        decode(tmp_path / "cut.jpg", 3)


def test_labels_only_from_an_unambiguous_layout_and_the_index_cache(tmp_path, monkeypatch):
    make_tree(tmp_path / "labelled", per_class=4)
    (tmp_path / "labelled" / "notes.txt").write_text("not an image")
    idx = scan_folder(tmp_path / "labelled")
    assert idx.classes == ["cat", "dog"] and idx.ignored == 1 and len(idx.paths) == 8
    nested = tmp_path / "albums"
    make_tree(nested / "2024", classes=("paris", "rome"), per_class=2)  # images two levels down
    make_tree(nested, classes=("2023",), per_class=2)  # and one level down
    idx = scan_folder(nested)
    assert idx.classes == [] and (idx.labels == -1).all() and len(idx.paths) == 6
    assert scan_folder(nested, labels="folders").classes == ["2023", "2024"]  # asked for
    write_photo(nested / "loose", "jpg", 50, 40, np.random.default_rng(1))
    with pytest.raises(DatasetError, match="loose.jpg is not in a class folder"):
        scan_folder(nested, labels="folders")
    assert scan_folder(make_flat(tmp_path / "flat"), labels="auto").classes == []
    # the index is cached while no folder changes, rescanned when one does
    walks = []
    real = folder_mod.walk_images
    monkeypatch.setattr(folder_mod, "walk_images", lambda root: walks.append(root) or real(root))
    scan_folder(tmp_path / "labelled")
    assert walks == []
    write_photo(tmp_path / "labelled" / "dog" / "new", "png", 30, 30, np.random.default_rng(2))
    assert len(scan_folder(tmp_path / "labelled").paths) == 9 and len(walks) == 1


def test_crop_aspect_ratio_follows_the_original_image(tmp_path):
    # a 300 x 100 image whose red channel is the x coordinate: a whole-image crop (scale 1) at
    # the largest allowed aspect ratio 4:3 spans 133 of 300 columns; squashing the photo to a
    # square first would span all of them
    x = np.linspace(0, 255, 300).round().astype(np.uint8)
    arr = np.zeros((100, 300, 3), np.uint8)
    arr[..., 0] = x[None, :]
    Image.fromarray(arr).save(tmp_path / "wide.png")
    idx = scan_folder(tmp_path, labels="none")
    ds = ImageFolderDataset(idx, 3, img_size=32)
    img, _ = ds[0]
    assert tuple(img.shape) == (3, 100, 300)  # decoded at its own size
    aug = AugConfig(
        global_crops_scale=(1.0, 1.0),
        flip_p=0.0,
        color_jitter_p=0.0,
        grayscale_p=0.0,
        blur_p=(0.0, 0.0, 0.0),
        solarize_p=0.0,
    )
    t = MultiCropTransform.from_config(aug, 32, 3, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    red = t(img)[0][0] * 255
    span = float(red.max() - red.min())
    assert 100 < span < 130  # 133/300 of the 255 range, minus the outer half-pixels
    # the PIL path the training loop uses for photos: the same crop, uint8
    pil = PILMultiCrop.from_transform(t)
    torch.manual_seed(0)
    crop = pil(ds.pil_item(0)[0])[0]
    assert crop.dtype == torch.uint8 and tuple(crop.shape) == (3, 32, 32)
    assert 100 < float(crop[0].max()) - float(crop[0].min()) < 130
    # the evaluation view keeps the aspect ratio too: shorter side 37, centre 32 x 32
    ev, _, _ = EvalCrops(ds, 32)[0]
    assert tuple(ev.shape) == (3, 32, 32) and float(ev[0].max()) - float(ev[0].min()) < 80


def test_auto_in_memory_only_for_small_one_size_trees(tmp_path):
    make_tree(tmp_path / "mixed", per_class=3)
    ds = get_dataset("imagefolder", "train", root=tmp_path / "mixed")
    assert isinstance(ds, ImageFolderDataset) and len(ds) == 6 and ds.classes == ["cat", "dog"]
    with pytest.raises(DatasetError, match="mixes image sizes"):
        get_dataset("imagefolder", "train", root=tmp_path / "mixed", in_memory=True)
    lazy = get_dataset("imagefolder", "train", root=tmp_path / "mixed", img_size=16)  # never squashed
    assert isinstance(lazy, ImageFolderDataset) and lazy.img_size == 16
    mem = get_dataset("imagefolder", "train", root=tmp_path / "mixed", img_size=16, in_memory=True)  # asked for
    assert mem.images.shape == (6, 16, 16, 3)
    same = tmp_path / "same" / "a"
    same.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (12, 10)).save(same / f"{i}.png")
    assert get_dataset("imagefolder", "train", root=tmp_path / "same").images.shape == (3, 10, 12, 3)


def _config(tmp_path, root, out, extra=""):
    cfg = tmp_path / f"{out.name}.yaml"
    cfg.write_text(
        f"data: {{name: imagefolder, root: {root}, img_size: 32, num_workers: 1}}\n"
        "aug: {local_crops_number: 2, local_crops_size: 16}\n"
        "model: {backbone: vit_tiny, patch_size: 8, depth: 1}\n"
        "method: {name: dino, out_dim: 32, hidden_dim: 32, bottleneck_dim: 16}\n"
        f"train: {{epochs: 1, batch_size: 4, max_steps: 3, log_every: 1}}\noutput_dir: {out}\ndevice: cpu\n" + extra
    )
    return cfg


def test_mixed_tree_pretrains_skips_a_corrupt_file_and_evaluates(tmp_path, capsys):
    make_tree(tmp_path / "data" / "train", per_class=9)
    make_tree(tmp_path / "data" / "val", per_class=3, seed=1)
    (tmp_path / "data" / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "run"
    assert (
        main(
            [
                "pretrain",
                "--config",
                str(_config(tmp_path, tmp_path / "data", out)),
                "--set",
                "data.on_corrupt=skip",
                "--no-progress",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "read lazily" in captured.out
    summary = json.loads(captured.out.strip().splitlines()[-1])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # 19 files, 3 steps of 4 images of one seeded permutation: the broken one is met unless it
    # falls among the 7 never drawn; either way what is counted is what the summary says
    assert records[-1]["skipped_files"] == summary["skipped_files"]
    assert (
        main(
            [
                "eval",
                "knn",
                "--checkpoint",
                str(out),
                "--dataset",
                "imagefolder",
                "--root",
                str(tmp_path / "data"),
                "--json",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert 0 <= res["top1"] <= 100
    assert (
        main(
            [
                "eval",
                "finetune",
                "--checkpoint",
                str(out),
                "--dataset",
                "imagefolder",
                "--root",
                str(tmp_path / "data"),
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--workers",
                "0",
                "--json",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["train_images"] == 19 and 0 <= res["top1"] <= 100
    assert (
        main(
            [
                "attention",
                str(out),
                "--dataset",
                "imagefolder",
                "--root",
                str(tmp_path / "data"),
                "--indices",
                "0",
                "1",
                "--out",
                str(tmp_path / "att.png"),
            ]
        )
        == 0
    )
    assert (tmp_path / "att.png").stat().st_size > 0
    # under `fail` the run stops, naming the file
    for p in (tmp_path / "data" / "train" / "cat").rglob("*.*"):
        p.write_bytes(b"")  # half the files: the first batch (seeded) meets one
    assert (
        main(
            [
                "pretrain",
                "--config",
                str(_config(tmp_path, tmp_path / "data", tmp_path / "run2")),
                "--set",
                "data.in_memory=false",
                "--no-progress",
            ]
        )
        == 1
    )
    assert "cannot decode" in capsys.readouterr().err


def test_skip_counts_every_bad_file_met(tmp_path, capsys):
    make_tree(tmp_path / "photos", per_class=4)
    for i in range(4):  # 4 of 12 files are bad
        (tmp_path / "photos" / "cat" / f"bad{i}.jpg").write_bytes(b"junk")
    out = tmp_path / "run"
    cfg = _config(tmp_path, tmp_path / "photos", out, "eval: {knn_every: 1}\n")
    assert (
        main(
            [
                "pretrain",
                "--config",
                str(cfg),
                "--set",
                "data.on_corrupt=skip",
                "--set",
                "train.max_steps=null",
                "--set",
                "data.labels=none",
                "--no-progress",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "evaluation monitor off" in captured.out
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["step"] == 3 and summary["skipped_files"] >= 4  # one epoch reads every file once
    # an unlabelled folder has nothing to score: evaluation says so in one line
    assert (
        main(["eval", "knn", "--checkpoint", str(out), "--dataset", "imagefolder", "--root", str(tmp_path / "photos")])
        == 1
    )
    assert "held-out" in capsys.readouterr().err


def test_unlabelled_nested_folder_pretrains(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(8):
        write_photo(
            tmp_path / "photos" / ("2023/summer" if i % 2 else "2024") / f"img{i}",
            "jpg",
            int(rng.integers(40, 120)),
            int(rng.integers(40, 120)),
            rng,
        )
    out = tmp_path / "run"
    assert (
        main(
            [
                "pretrain",
                "--config",
                str(_config(tmp_path, tmp_path / "photos", out)),
                "--set",
                "train.max_steps=2",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "no classes" in capsys.readouterr().out
    assert (out / "checkpoint-2.pt").is_file()
    # resumable: the same run continues from its checkpoint
    assert (
        main(
            [
                "pretrain",
                "--config",
                str(_config(tmp_path, tmp_path / "photos", out)),
                "--set",
                "train.max_steps=null",
                "--resume",
                "auto",
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 2


def test_streaming_features_equal_for_any_worker_count(tmp_path):
    make_tree(tmp_path / "t", per_class=5)
    ds = get_dataset("imagefolder", "train", root=tmp_path / "t", in_memory=False)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    from sslkd.eval import extract_features

    a, la = extract_features(net, ds, (0.5,) * 3, (0.25,) * 3, size=16, batch_size=3)
    b, lb = extract_features(net, ds, (0.5,) * 3, (0.25,) * 3, size=16, batch_size=4, num_workers=2)
    assert a.shape == (10, 4) and torch.allclose(a, b) and torch.equal(la, lb)
    assert la.tolist() == [0] * 5 + [1] * 5


def test_pil_hue_is_the_batch_paths_rotation_and_views_follow_the_seed():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    got = np.asarray(shift_hue(Image.fromarray(arr), 0.07), dtype=np.float64)
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].double() / 255
    want = (rotate_hue(x, torch.tensor([0.07 * 2 * np.pi], dtype=torch.float64)).clamp(0, 1) * 255)[0]
    assert np.abs(got - want.permute(1, 2, 0).numpy()).max() <= 1.0  # PIL rounds to 8 bits
    t = MultiCropTransform.from_config(
        AugConfig(local_crops_number=2, local_crops_size=16), 32, 3, (0.5,) * 3, (0.25,) * 3
    )
    pil, im = PILMultiCrop.from_transform(t), Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    views = []
    for seed in (1, 1, 2):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            views.append(pil(im))
    assert [tuple(v.shape) for v in views[0]] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 2
    assert all(torch.equal(a, b) for a, b in zip(views[0], views[1]))
    assert not torch.equal(views[0][0], views[2][0])


def test_photos_train_with_colour_on_the_device(tmp_path, capsys):
    """Workers crop, the batch is coloured on the device: ``colour`` is the recipe's photometric half
    (no op left on: normalisation only; jitter on: changed, the same for the same key)."""
    from sslkd.data.batch_augment import BatchMultiCrop

    crops = [torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8) for _ in range(3)]
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    off = BatchMultiCrop(
        CropRecipe(
            3,
            mean,
            std,
            16,
            16,
            local_number=1,
            color_jitter_p=0.0,
            grayscale_p=0.0,
            blur_p=(0.0, 0.0, 0.0),
            solarize_p=0.0,
        )
    )
    m, sd = torch.tensor(mean)[None, :, None, None], torch.tensor(std)[None, :, None, None]
    for got, c in zip(off.colour(crops, 7), crops):
        torch.testing.assert_close(got, (c.float() / 255 - m) / sd)
    on = BatchMultiCrop(CropRecipe(3, mean, std, 16, 16, local_number=1, color_jitter_p=1.0))
    a, b = on.colour(crops, 7), on.colour(crops, 7)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.allclose(a[0], off.colour(crops, 7)[0])
    make_tree(tmp_path / "photos", per_class=4)
    out = tmp_path / "run"
    assert (
        main(
            [
                "pretrain",
                "--config",
                str(_config(tmp_path, tmp_path / "photos", out)),
                "--set",
                "data.augment_on=device",
                "--set",
                "train.max_steps=2",
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 2


def test_held_out_split_is_labelled_by_the_training_classes(tmp_path):
    from sslkd.data import held_out

    make_tree(tmp_path / "d" / "train", classes=("ant", "bee", "cat"), per_class=2)
    make_tree(tmp_path / "d" / "val", classes=("bee", "cat"), per_class=2, seed=1)  # no 'ant' images
    train = get_dataset("imagefolder", "train", root=tmp_path / "d")
    test = held_out("imagefolder", train, root=tmp_path / "d")
    assert test.classes == ["ant", "bee", "cat"] and test.labels.tolist() == [1, 1, 2, 2]  # not [0, 0, 1, 1]
    write_photo(tmp_path / "d" / "val" / "dog" / "x", "jpg", 50, 40, np.random.default_rng(0))
    with pytest.raises(DatasetError, match="outside the training classes .*dog") as e:
        held_out("imagefolder", train, root=tmp_path / "d")
    assert "loose" not in str(e.value)  # nothing is loose: the message says so only when it is
    write_photo(tmp_path / "d" / "val" / "y", "jpg", 50, 40, np.random.default_rng(0))
    with pytest.raises(DatasetError, match=r"\(folders dog; images loose in the folder\)"):
        held_out("imagefolder", train, root=tmp_path / "d", use_cache=False)
    # held-out images never become training images: val/ without train/ is refused for training
    make_tree(tmp_path / "e" / "val", per_class=2)
    make_tree(tmp_path / "e", classes=("x", "y"), per_class=2)
    with pytest.raises(DatasetError, match="has val/ but no train/"):
        get_dataset("imagefolder", "train", root=tmp_path / "e")


def test_in_memory_cache_follows_the_labels_mode(tmp_path):
    root = tmp_path / "t"
    for c, n in (("a", 2), ("b", 1)):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / c / f"{i}.png")
    (root / "b" / "deeper").mkdir()
    Image.new("RGB", (8, 8)).save(root / "b" / "deeper" / "z.png")  # uneven depth: auto = unlabelled
    assert get_dataset("imagefolder", "train", root=root).labels.tolist() == [-1] * 4
    assert get_dataset("imagefolder", "train", root=root, labels="folders").labels.tolist() == [0, 0, 1, 1]
