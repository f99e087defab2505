"""Reading the same photos from WebDataset shards, from the folder, and from a Hugging Face Arrow set.

Generated ~500 x 375 JPEGs (``folder_loader.make_jpegs``) are packed by ``sslkd data pack`` and,
when the ``datasets`` package is installed, saved as an Arrow dataset (an image column of the
undecoded bytes, ``save_to_disk``). Each reader then runs in a fresh process on one core
(``torch.set_num_threads(1)``, no workers) over one training epoch's order (the seeded sampler;
shard by shard for shards, as training reads them), in batches of 64 whose reads a shard set
announces first (``ShardDataset.prefetch``, as the loader's batched fetch does), and reports
images/s of (a) reading the bytes and (b) reading + decoding as training does (JPEG draft at 224),
and the process's peak RSS.
``cold``: each file's pages are dropped from the page cache first (``posix_fadvise DONTNEED``),
as on a first epoch over a collection larger than memory; ``warm``: read once before timing.
Readers alternate (A B C C B A ...) and the medians are reported.

    python benchmarks/shards.py --images 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def _drop_cache(root: Path) -> None:
    os.sync()  # dirty pages (files just written) cannot be dropped
    for dirpath, _, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _reader(kind: str, root: Path):
    """(number of images, read(i) -> bytes, decode(i) -> PIL image, groups, announce(batch)) of a reader."""
    from sslkd.data import get_dataset
    from sslkd.data.folder import decode

    if kind == "hf":
        import datasets

        ds = datasets.load_from_disk(str(root))

        def read(i):
            return ds[int(i)]["image"]["bytes"]

        def dec(i):
            return decode(io.BytesIO(read(i)), 3, 224)

        return len(ds), read, dec, None, lambda batch: None
    ds = get_dataset("imagefolder" if kind == "folder" else "shards", "train", root=root, in_memory=False)
    if kind == "folder":
        return len(ds), lambda i: Path(ds.path(i)).read_bytes(), lambda i: ds.image(i, 224), None, ds.prefetch
    return len(ds), lambda i: ds.read(i)[0], lambda i: ds.image(i, 224), ds.shard_of, ds.prefetch


def one(kind: str, root: Path, what: str, cold: bool, batch: int = 64) -> dict:
    import torch

    from sslkd.data.augment import SeededEpochSampler

    torch.set_num_threads(1)
    n, read, dec, groups, announce = _reader(kind, root)
    order = [i for i, _ in SeededEpochSampler(n, 0, 0, groups=groups)]
    fn = read if what == "read" else dec
    if cold:
        _drop_cache(root)
    else:
        for i in order:
            read(i)
    t0 = time.perf_counter()
    for start in range(0, n, batch):  # as a loader worker fetches a batch: its reads announced first
        part = order[start : start + batch]
        announce(part)
        for i in part:
            fn(i)
    dt = time.perf_counter() - t0
    # VmHWM, not ru_maxrss: the latter keeps the parent's high-water mark across exec
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
    return {"img_per_s": n / dt, "peak_rss_mb": int(hwm.split()[1]) / 1024}


def prepare(images: int, work: Path) -> dict[str, Path]:
    from folder_loader import make_jpegs

    from sslkd.data.pack import pack_folder

    roots = {"folder": make_jpegs(work / "folder", images)}
    t0 = time.perf_counter()
    pack_folder(roots["folder"], work / "shards", progress=False)
    mb = sum(f.stat().st_size for f in roots["folder"].rglob("*.jpg")) / 2**20
    print(f"packed {images} images ({mb:.0f} MiB) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    roots["shards"] = work / "shards"
    try:
        import datasets
    except ImportError:
        print("datasets is not installed: the Arrow reader is left out", file=sys.stderr)
        return roots
    files = sorted(roots["folder"].rglob("*.jpg"))
    feats = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.Value("int64")})
    rows = {"image": [{"bytes": f.read_bytes(), "path": None} for f in files], "label": [0] * len(files)}
    datasets.Dataset.from_dict(rows, features=feats).save_to_disk(str(work / "hf"))
    roots["hf"] = work / "hf"
    return roots


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--one", nargs=4, metavar=("KIND", "ROOT", "WHAT", "COLD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        kind, root, what, cold = args.one
        print(json.dumps(one(kind, Path(root), what, cold == "cold")))
        return
    with tempfile.TemporaryDirectory() as tmp:
        roots = prepare(args.images, Path(tmp))
        results: dict[tuple, list[dict]] = {}
        cases = [(k, w, c) for c in ("cold", "warm") for w in ("read", "decode") for k in roots]
        for r in range(args.rounds):
            for kind, what, cold in cases if r % 2 == 0 else cases[::-1]:
                cmd = [sys.executable, __file__, "--one", kind, str(roots[kind]), what, cold]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                results.setdefault((kind, what, cold), []).append(json.loads(out.strip().splitlines()[-1]))
        for (kind, what, cold), rs in results.items():
            med = {k: float(np.median([r[k] for r in rs])) for k in rs[0]}
            print(json.dumps({"reader": kind, "what": what, "cache": cold, **{k: round(v, 1) for k, v in med.items()}}))


if __name__ == "__main__":
    main()
