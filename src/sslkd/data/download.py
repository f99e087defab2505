"""Fetching official archives: URL + md5, written atomically, never trusted unchecked."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.request
from pathlib import Path

from sslkd.data.base import DatasetError


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, md5: str | None) -> Path:
    """Download ``url`` to ``dest`` (skipped when a file with the right md5 is there)."""
    dest = Path(dest)
    if dest.is_file() and (md5 is None or md5sum(dest) == md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DatasetError(
            f"could not download {url} to {dest}: {e}. Without a network, put the "
            f"file there yourself or pass --root to a local copy."
        ) from e
    if md5 is not None and (got := md5sum(tmp)) != md5:
        tmp.unlink()
        raise DatasetError(f"checksum mismatch for {url}: md5 {got}, expected {md5}")
    os.replace(tmp, dest)
    return dest


def extract_tar(archive: Path, into: Path) -> None:
    """Extract a tar archive with the 'data' filter (no absolute paths, links out, devices)."""
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DatasetError(f"{archive}: not a readable tar archive ({e})") from e
