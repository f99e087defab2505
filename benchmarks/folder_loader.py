"""Reading a folder of photos: loader speed per core against torchvision + DINO, and memory vs size.

``speed``: images/s of one process on one core (``torch.set_num_threads(1)``, no workers) for
the DINO/iBOT multi-crop at 224 (2 x 224 + 10 x 96 crops) on generated ~500 x 375 JPEGs, the
reference pipeline (torchvision ``ImageFolder`` + DINO's ``DataAugmentationDINO`` as in its
``main_dino.py``: PIL transforms, ``ImageFilter`` blur) against sslkd's lazy folder with (a) the
torchvision-v2 tensor transform, (b) the PIL transform with uint8 crops (normalised per batch),
(c) workers that only crop, colour applied per batch (``BatchMultiCrop.colour``: on the CPU here,
on the GPU under ``data.augment_on: device``). Per-batch work is timed on the same core and
counted; the workers' share alone is reported too. Pipelines alternate (A B C D D C B A ...;
medians), so that the machine's drift hits all alike.

``memory``: peak RSS of ``sslkd pretrain`` (its main process, and its largest loader worker) on
generated folders of 256-512 px JPEGs of two sizes; what must not grow is the difference.

    python benchmarks/folder_loader.py speed --images 96 --rounds 4
    python benchmarks/folder_loader.py memory --sizes 2000 20000 --steps 10 [--shards]
    python benchmarks/folder_loader.py scan --files 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps


def photo(rng: np.random.Generator, w: int, h: int, grain: bool = True) -> Image.Image:
    """A photo-like image: smooth shapes (low-frequency noise) plus fine grain, ~100 KB at 500 x 375."""
    low = Image.fromarray(rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)).resize(
        (w, h), Image.BICUBIC
    )
    if not grain:  # fast to make (the memory benchmark writes 20,000)
        return low
    grain = rng.normal(0, 9, (h, w, 3))
    return Image.fromarray((np.asarray(low, np.float32) + grain).clip(0, 255).astype(np.uint8))


def make_jpegs(
    root: Path, n: int, sizes: tuple[int, int] | None = None, classes: int = 10, seed: int = 0, grain: bool = True
) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = sizes or (int(rng.integers(256, 513)), int(rng.integers(256, 513)))
        d = root / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        photo(rng, w, h, grain).save(d / f"{i:06d}.jpg", quality=90)
    return root


class _Blur:  # DINO utils.GaussianBlur
    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img):
        if random.random() > self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


class _Solarize:  # DINO utils.Solarization
    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img):
        return ImageOps.solarize(img) if random.random() < self.p else img


def dino_reference(local_number: int = 10):
    """DINO's DataAugmentationDINO (main_dino.py), on PIL images, as a callable."""
    from torchvision import transforms as T

    flip_jitter = T.Compose(
        [
            T.RandomHorizontalFlip(p=0.5),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
        ]
    )
    norm = T.Compose([T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    bicubic = T.InterpolationMode.BICUBIC
    g1 = T.Compose([T.RandomResizedCrop(224, scale=(0.4, 1.0), interpolation=bicubic), flip_jitter, _Blur(1.0), norm])
    g2 = T.Compose(
        [
            T.RandomResizedCrop(224, scale=(0.4, 1.0), interpolation=bicubic),
            flip_jitter,
            _Blur(0.1),
            _Solarize(0.2),
            norm,
        ]
    )
    lo = T.Compose([T.RandomResizedCrop(96, scale=(0.05, 0.4), interpolation=bicubic), flip_jitter, _Blur(0.5), norm])
    return lambda img: [g1(img), g2(img)] + [lo(img) for _ in range(local_number)]


def speed(args) -> dict:
    import torch
    from torchvision.datasets import ImageFolder

    from sslkd.config import AugConfig
    from sslkd.data import get_dataset
    from sslkd.data.augment import MultiCropDataset, MultiCropTransform
    from sslkd.data.batch_augment import BatchMultiCrop
    from sslkd.data.pil_augment import PILMultiCrop
    from sslkd.eval import normalize_batch

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="sslkd_jpegs_"))
    root = make_jpegs(tmp / "train", args.images, sizes=(500, 375))
    kb = np.mean([p.stat().st_size for p in root.rglob("*.jpg")]) / 1024
    ref = ImageFolder(str(root), transform=dino_reference(args.local_crops))
    ds = get_dataset("imagefolder", "train", root=tmp, img_size=224, in_memory=False)
    aug = AugConfig(local_crops_number=args.local_crops, local_crops_size=96)
    t = MultiCropTransform.from_config(aug, 224, 3, ds.mean, ds.std, multiple=16)
    ds.draft = int(np.ceil(224 / np.sqrt(0.4)))
    tensor_path = MultiCropDataset(ds, t)
    pil_path = MultiCropDataset(ds, PILMultiCrop.from_transform(t))
    crop_path = MultiCropDataset(ds, PILMultiCrop.from_transform(t, crop_only=True))
    colour = BatchMultiCrop.from_transform(t)
    batch = 32

    def timed(items, on_batch=None) -> tuple[float, float]:
        """(img/s of everything on this core, img/s of the per-image (worker) part alone)."""
        worker = device = 0.0
        for start in range(0, len(items), batch):
            tic = time.perf_counter()
            got = [items[i] for i in range(start, min(start + batch, len(items)))]
            worker += time.perf_counter() - tic
            if on_batch is not None:
                tic = time.perf_counter()
                on_batch(got)
                device += time.perf_counter() - tic
        return len(items) / (worker + device), len(items) / worker

    def stack(got):
        return [torch.stack([g[0][k] for g in got]) for k in range(len(got[0][0]))]

    runs = {
        "reference": lambda: timed(_Indexed(ref, lambda i: ref[i])),
        "sslkd_tensor": lambda: timed(_Indexed(tensor_path, lambda i: tensor_path[(i, i)])),
        "sslkd_pil": lambda: timed(
            _Indexed(pil_path, lambda i: pil_path[(i, i)]),
            lambda got: [normalize_batch(v, ds.mean, ds.std) for v in stack(got)],
        ),
        "sslkd_crop_then_batch_colour": lambda: timed(
            _Indexed(crop_path, lambda i: crop_path[(i, i)]), lambda got: colour.colour(stack(got), 0)
        ),
    }
    shapes = [tuple(c.shape) for c in ref[0][0]]
    assert shapes == [tuple(c.shape) for c in pil_path[(0, 0)][0]] == [tuple(c.shape) for c in tensor_path[(0, 0)][0]]
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    order = list(runs)
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            results[name].append(runs[name]())
    med = {k: (float(np.median([a for a, _ in v])), float(np.median([b for _, b in v]))) for k, v in results.items()}
    base = med["reference"][0]
    return {
        "bench": "folder_loader_speed",
        "date": time.strftime("%Y-%m-%d"),
        "images": args.images,
        "jpeg_kb": round(float(kb), 1),
        "size": "500x375",
        "crops": f"2x224 + {args.local_crops}x96",
        "threads": 1,
        "rounds": args.rounds,
        "img_s_per_core": {k: round(v[0], 2) for k, v in med.items()},
        "worker_img_s_per_core": {k: round(v[1], 2) for k, v in med.items()},
        "ratio_to_reference": {k: round(v[0] / base, 3) for k, v in med.items()},
        "worker_ratio_to_reference": {k: round(v[1] / base, 3) for k, v in med.items()},
    }


class _Indexed:
    def __init__(self, ds, get) -> None:
        self.n, self.get = len(ds), get

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.get(i)


def _pretrain_rss(root: Path, steps: int, out: Path, name: str = "imagefolder") -> dict:
    cfg = out.with_suffix(".yaml")
    cfg.write_text(
        f"data: {{name: {name}, root: {root}, img_size: 64, num_workers: 2}}\n"
        "aug: {local_crops_number: 2, local_crops_size: 32}\n"
        "model: {backbone: vit_tiny, patch_size: 16, depth: 2}\n"
        "method: {name: dino, out_dim: 256, hidden_dim: 256, bottleneck_dim: 64}\n"
        f"train: {{epochs: 1, batch_size: 32, max_steps: {steps}}}\neval: {{knn_every: 0}}\n"
        f"output_dir: {out}\ndevice: cpu\n"
    )
    code = (
        "import resource, sys, json; from sslkd.cli import main; rc = main(sys.argv[1:]); "
        "print(json.dumps({'main_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
        "'worker_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024})); sys.exit(rc)"
    )
    tic = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-c", code, "pretrain", "--config", str(cfg), "--no-progress"],
        capture_output=True,
        text=True,
        env={**os.environ, "SSLKD_CACHE": str(out) + "_cache"},
    )
    if r.returncode:
        raise SystemExit(r.stderr[-2000:])
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "seconds": round(time.perf_counter() - tic, 1)}


def memory(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="sslkd_mem_"))
    rows = []
    biggest = max(args.sizes)
    make_jpegs(
        tmp / "all", biggest, seed=1, grain=False
    )  # the smaller sets are prefixes of the big one, in their own trees
    files = sorted((tmp / "all").rglob("*.jpg"))
    for n in sorted(args.sizes):
        root = tmp / f"n{n}"
        for f in files[:n] if n < biggest else []:
            (root / f.parent.name).mkdir(parents=True, exist_ok=True)
            os.link(f, root / f.parent.name / f.name)
        root = root if n < biggest else tmp / "all"
        if args.shards:  # the same images packed: sslkd data pack
            from sslkd.data.pack import pack_folder

            pack_folder(root, tmp / f"shards{n}", progress=False)
            row = _pretrain_rss(tmp / f"shards{n}", args.steps, tmp / f"run{n}", "shards")
        else:
            row = _pretrain_rss(root, args.steps, tmp / f"run{n}")
        rows.append({"images": n, **{k: round(v, 1) for k, v in row.items()}})
        print(json.dumps(rows[-1]), flush=True)
    first, last = rows[0], rows[-1]
    return {
        "bench": "shards_memory" if args.shards else "folder_memory",
        "date": time.strftime("%Y-%m-%d"),
        "steps": args.steps,
        "rows": rows,
        "main_growth_mb": round(last["main_rss_mb"] - first["main_rss_mb"], 1),
        "worker_growth_mb": round(last["worker_rss_mb"] - first["worker_rss_mb"], 1),
    }


def scan(args) -> dict:
    """Index build and reuse time of a tree of ``--files`` empty ``.jpg`` files in 1,000 folders."""
    from sslkd.data.folder import scan_folder

    tmp = Path(tempfile.mkdtemp(prefix="sslkd_scan_"))
    tic = time.perf_counter()
    for i in range(args.files):
        d = tmp / f"n{i % 1000:04d}"
        if i < 1000:
            d.mkdir()
        (d / f"{i:07d}.jpg").touch()
    made = time.perf_counter() - tic
    os.environ["SSLKD_CACHE"] = str(tmp) + "_cache"
    tic = time.perf_counter()
    first = scan_folder(tmp)
    cold = time.perf_counter() - tic
    tic = time.perf_counter()
    scan_folder(tmp)
    warm = time.perf_counter() - tic
    return {
        "bench": "folder_scan",
        "date": time.strftime("%Y-%m-%d"),
        "files": len(first.paths),
        "folders": 1000,
        "classes": len(first.classes),
        "create_s": round(made, 1),
        "scan_s": round(cold, 2),
        "cached_s": round(warm, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--images", type=int, default=96)
    s.add_argument("--rounds", type=int, default=4)
    s.add_argument("--local-crops", type=int, default=10)
    m = sub.add_parser("memory")
    m.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    m.add_argument("--steps", type=int, default=10)
    m.add_argument("--shards", action="store_true", help="pack each tree and train on its shards")
    c = sub.add_parser("scan")
    c.add_argument("--files", type=int, default=1_000_000)
    for q in (s, m, c):
        q.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()
    res = {"speed": speed, "memory": memory, "scan": scan}[args.what](args)
    print(json.dumps(res))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
