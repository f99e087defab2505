"""``sslkd data pack FOLDER --out DIR``: any image folder as WebDataset tar shards, resumably.

The plan is a pure function of the folder and the options: the images of each split (``train``,
and ``val`` from a ``val/`` or ``test/`` folder) in a seeded random order, so that every shard is
a random sample of the collection (a folder in class order would otherwise give one-class
shards, and one-class batches), cut into shards of ``shard_size`` images. Each shard is written to
a temporary file, indexed (the byte offset of every image) and renamed; a rerun after an
interruption checks that the plan is the same (``_pack.json``) and writes only the shards that
are missing. ``_info.json`` is written last: its presence means the set is complete.

Files are stored as they are (no re-encoding); a file whose header no image library can read is
left out, counted and named in ``_info.json``. Shards are byte-for-byte reproducible (fixed
member times), so an interrupted and resumed packing equals an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import webdataset
from PIL import Image
from tqdm import tqdm

from sslkd.data.base import DatasetError, NoHeldOutSplitError
from sslkd.data.folder import FolderIndex, guess_channels, scan_folder
from sslkd.data.imagefolder import split_root
from sslkd.data.shards import FORMAT_VERSION, HELD_OUT_SPLIT, INDEX_DTYPE, INFO

PLAN = "_pack.json"
MTIME = 946684800  # 2000-01-01: fixed member times make shards reproducible
_EXT = {"jpeg": "jpg", "tif": "tiff"}  # WebDataset's usual spellings (timm reads jpg;png;webp)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _plan(index: FolderIndex, seed: int, shard_size: int | None, shard_mb: float) -> dict:
    order = np.random.default_rng(seed).permutation(len(index.paths))
    if shard_size is None:  # from the mean size of up to 256 files of the (seeded) order
        sizes = [os.stat(index.root / index.paths[i]).st_size for i in order[:256]]
        shard_size = max(1, int(shard_mb * 2**20 / max(1.0, float(np.mean(sizes)))))
    digest = hashlib.sha1("\n".join(index.paths).encode(errors="surrogateescape"))
    digest.update(index.labels.tobytes())
    root = str(index.root.resolve())
    return {"root": root, "images": len(order), "shard_size": shard_size, "files": digest.hexdigest()}


def write_shard(index: FolderIndex, rows: np.ndarray, keys: np.ndarray, path: Path, labelled: bool) -> list[str]:
    """Write the images ``rows`` of ``index`` (named ``keys``) as one tar at ``path``, then its
    index ``path.idx.npy``; returns the files left out (unreadable)."""
    skipped = []
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f, webdataset.TarWriter(f, mtime=MTIME) as sink:
        for r, key in zip(rows, keys):
            file = index.root / index.paths[r]
            try:
                data = file.read_bytes()
                with Image.open(io.BytesIO(data)) as im:  # the header only: is it an image at all?
                    im.size  # noqa: B018
            except Image.UnidentifiedImageError:
                skipped.append(f"{file}: not an image file PIL can read")
                continue
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                skipped.append(f"{file}: {e}")
                continue
            ext = os.path.splitext(file.name)[1].lower().lstrip(".")
            sample = {"__key__": f"{key:08d}", _EXT.get(ext, ext): data}
            if labelled:
                sample["cls"] = str(int(index.labels[r]))
            sink.write(sample)
    entries = []
    with tarfile.open(tmp) as tar:  # where each image's bytes start, for reading by offset
        for m in tar:
            key, ext = m.name.split(".", 1)
            if ext != "cls":
                label = int(index.labels[rows[int(key) - keys[0]]]) if labelled else -1
                entries.append((0, int(key), m.offset_data, m.size, label))
    os.replace(tmp, path)
    _atomic_write(path.with_name(path.name + ".skipped.json"), json.dumps(skipped).encode())
    buf = io.BytesIO()
    np.save(buf, np.array(entries, dtype=INDEX_DTYPE))
    _atomic_write(path.with_name(path.name + ".idx.npy"), buf.getvalue())  # last: the shard is done
    return skipped


def pack_folder(
    folder: str | Path,
    out: str | Path,
    shard_size: int | None = None,
    shard_mb: float = 256.0,
    seed: int = 0,
    labels: str = "auto",
    progress: bool = True,
) -> dict:
    """Pack ``folder`` (``train/`` + ``val/``/``test/``, or one folder of any depth) into ``out``;
    returns the ``_info.json`` written. Rerunning after an interruption finishes the job."""
    folder, out = Path(folder).expanduser(), Path(out).expanduser()
    train = scan_folder(split_root(folder, "train"), labels)
    indexes = {"train": train}
    try:
        held = split_root(folder, "test")
        # labelled by the training classes, as a folder's held-out split is
        labelled = scan_folder(held, classes=train.classes) if train.classes else None
        indexes[HELD_OUT_SPLIT] = labelled or scan_folder(held, "none")
    except NoHeldOutSplitError:
        pass
    options = {"seed": seed, "labels": labels, "shard_mb": None if shard_size else shard_mb, "format": FORMAT_VERSION}
    plan = {"options": options, "splits": {s: _plan(ix, seed, shard_size, shard_mb) for s, ix in indexes.items()}}
    out.mkdir(parents=True, exist_ok=True)
    if (out / INFO).is_file() and not (out / PLAN).is_file():
        raise DatasetError(f"data pack: {out} already holds shards not written by this command; choose another --out")
    if (out / PLAN).is_file():
        old = json.loads((out / PLAN).read_text())
        for s, p in plan["splits"].items():  # the shard size estimated then is the one to keep
            if shard_size is None and s in old["splits"]:
                p["shard_size"] = old["splits"][s]["shard_size"]
        if old != plan:
            raise DatasetError(
                f"data pack: {out} holds a packing of another folder or other options ({out / PLAN}); "
                f"choose another --out, or delete it to start again"
            )
        if (out / INFO).is_file():
            return json.loads((out / INFO).read_text())
    _atomic_write(out / PLAN, json.dumps(plan, indent=1).encode())
    info = {"name": folder.name, "splits": {}}
    skipped: dict[str, list[str]] = {}
    for split, index in indexes.items():
        size, labelled = plan["splits"][split]["shard_size"], bool(train.classes)
        order = np.random.default_rng(seed).permutation(len(index.paths))
        names, parts, skipped[split] = [], [], []
        bar = tqdm(total=len(order), unit="img", desc=f"pack {split}", disable=not progress, dynamic_ncols=True)
        for k, start in enumerate(range(0, len(order), size)):
            path = out / f"{split}-{k:06d}.tar"
            rows = order[start : start + size]
            if path.is_file() and path.with_name(path.name + ".idx.npy").is_file():  # done before
                skipped[split] += json.loads(path.with_name(path.name + ".skipped.json").read_text())
            else:
                keys = np.arange(start, start + len(rows))
                for bad in write_shard(index, rows, keys, path, labelled):
                    skipped[split].append(bad)
                    tqdm.write(f"data pack: left out {bad}")
            part = np.load(path.with_name(path.name + ".idx.npy"))
            part["shard"] = k
            names.append(path.name)
            parts.append(part)
            bar.update(len(rows))
        bar.close()
        entries = np.concatenate(parts)
        buf = io.BytesIO()
        np.save(buf, entries)
        _atomic_write(out / f"{split}.index.npy", buf.getvalue())
        info["splits"][split] = {
            "name": split,
            "num_samples": len(entries),
            "filenames": names,
            "shard_lengths": [len(p) for p in parts],
        }
    exts = {}
    for index in indexes.values():
        for p in index.paths:
            e = os.path.splitext(p)[1].lower().lstrip(".")
            exts[_EXT.get(e, e)] = exts.get(_EXT.get(e, e), 0) + 1
    info["sslkd"] = {
        "format": FORMAT_VERSION,
        "source": str(folder.resolve()),
        "classes": list(train.classes),
        "channels": guess_channels(train.root, train.paths),
        "extensions": exts,
        "skipped": {s: len(ix.paths) - info["splits"][s]["num_samples"] for s, ix in indexes.items()},
        "skipped_files": {s: v[:100] for s, v in skipped.items() if v},
        "seed": seed,
    }
    _atomic_write(out / INFO, json.dumps(info, indent=1).encode())
    for split in indexes:
        for name in info["splits"][split]["filenames"]:
            for part in (".idx.npy", ".skipped.json"):
                (out / (name + part)).unlink(missing_ok=True)
    return info
