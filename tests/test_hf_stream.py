"""A Hugging Face dataset read as a stream (``data.options.streaming: true``), on Parquet files the
tests write: every row once an epoch in a seeded order, split between processes and workers, an
exact mid-epoch resume through the engine, a stale row count, bad rows, evaluations on the head."""

import io
import json
from itertools import islice

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from sslkd.cli import main
from sslkd.data import get_dataset
from sslkd.data.hf import HFOptions
from sslkd.data.hf_stream import HFStream, row_count
from sslkd.data.stream import StreamEpoch
from sslkd.errors import DatasetError

hfd = pytest.importorskip("datasets")


@pytest.fixture(autouse=True)
def no_shutdown_sleep(monkeypatch):
    """``datasets`` sleeps 5 s at the end of each pass over several Parquet shards (letting its
    reader threads stop): negligible in an epoch of a real set, minutes over these tiny ones."""
    monkeypatch.setattr(hfd.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


def png(a: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(a).save(out, "PNG")
    return out.getvalue()


def parquet_set(root, shards=4, per=8, test=8, size=16, bad=()):
    """Training rows whose pixels all hold their row number, in ``shards`` Parquet files (rows in
    ``bad`` hold no image), and a test split whose brightness says the class."""
    feats = hfd.Features({"image": hfd.Image(), "label": hfd.ClassLabel(names=["dark", "light"])})
    (root / "data").mkdir(parents=True)
    for k in range(shards):
        ids = range(k * per, (k + 1) * per)
        cells = [
            {"bytes": b"no image" if i in bad else png(np.full((size, size, 3), i, np.uint8)), "path": None}
            for i in ids
        ]
        part = hfd.Dataset.from_dict({"image": cells, "label": [i % 2 for i in ids]}, features=feats)
        part.to_parquet(str(root / "data" / f"train-{k:05d}-of-{shards:05d}.parquet"))
    cells = [{"bytes": png(np.full((size, size, 3), 40 + 160 * (i % 2), np.uint8)), "path": None} for i in range(test)]
    hfd.Dataset.from_dict({"image": cells, "label": [i % 2 for i in range(test)]}, features=feats).to_parquet(
        str(root / "data" / "test-00000-of-00001.parquet")
    )
    return root


def row_of(img):
    """The transform: the image itself (its pixels say its row)."""
    return [img]


def read(stream, epoch=0, workers=0, rank=0, world=1, start=0, batch=4) -> list[int]:
    """The rows one process reads of an epoch from batch ``start`` on, as the engine reads them."""
    items = StreamEpoch(stream, row_of, 0, epoch, rank, world, batch, start, workers)
    loader = DataLoader(items, batch_size=batch, drop_last=True, num_workers=workers)
    got = islice(iter(loader), items.dropped_batches(), len(loader))
    return [int(v) for views, *_ in got for v in views[0][:, 0, 0, 0]]


def streamed(root, **options):
    return get_dataset("hf", "train", root=str(root), options={"streaming": True, **options}, stream=True)


def test_stream_reads_every_row_once_an_epoch_in_a_seeded_order_and_resumes(tmp_path):
    stream = streamed(parquet_set(tmp_path / "pq"))
    assert isinstance(stream, HFStream) and len(stream) == 32 and "streamed" in stream.name  # from the footers
    assert stream.num_channels == 3 and stream.num_classes == 0  # labels come with the rows
    for workers in (0, 2):
        first = read(stream, 0, workers)
        assert sorted(first) == list(range(32)) and read(stream, 0, workers) == first  # seeded
        again = read(stream, 1, workers)
        assert sorted(again) == list(range(32)) and again != first  # reordered every epoch
        for start in (1, 2, 3, 5):  # a resumed epoch: the rest of the same order, whatever the worker round
            assert read(stream, 0, workers, start=start) == first[start * 4 :], (workers, start)
    halves = {e: [read(stream, e, 2, rank=r, world=2) for r in (0, 1)] for e in (0, 1)}
    for got in halves.values():  # two processes: disjoint halves of every row
        assert len(got[0]) == len(got[1]) == 16 and sorted(got[0] + got[1]) == list(range(32))
    assert halves[0] != halves[1]  # reordered every epoch
    with pytest.raises(DatasetError, match="a stream has no subsets"):
        get_dataset(
            "hf", "train", root=str(tmp_path / "pq"), options={"streaming": True}, stream=True, subset_fraction=0.5
        )


def test_a_stale_count_cycles_and_a_missing_one_is_asked_for(tmp_path):
    stream = streamed(parquet_set(tmp_path / "pq"), num_examples=40)  # the card says more than there is
    got = read(stream, 0, 2)
    assert len(got) == 40 and set(got) == set(range(32))  # 10 batches: every worker reads its part again
    no_info = hfd.Dataset.from_dict({"x": [1]}).to_iterable_dataset()
    with pytest.raises(DatasetError, match=r"hf:user/name\[train\] does not say how many rows.*num_examples"):
        row_count("user/name", "train", no_info, HFOptions(streaming=True), "hf:user/name[train]")


def test_bad_rows_are_passed_over_and_reported(tmp_path):
    stream = streamed(parquet_set(tmp_path / "pq", bad={5}))
    items = StreamEpoch(stream, row_of, 0, 0, 0, 1, 4, 0, 1)
    got = list(islice(items, 33))  # a pass and one: the engine stops at its epoch's length, the stream cycles
    pixels = [int(views[0][0, 0, 0]) for views, *_ in got]
    bad = [i for i, (*_, message) in enumerate(got) if message]
    assert len(bad) == 1 and "cannot decode" in got[bad[0]][3]
    assert pixels[bad[0]] == pixels[bad[0] + 1]  # the next good row stands in for it (one item a row)
    assert 5 not in pixels and set(pixels[:32]) == set(range(32)) - {5}
    assert got[bad[0]][2] != got[bad[0] + 1][2]  # with its own seed
    flat = streamed(parquet_set(tmp_path / "all_bad", shards=1, per=20, bad=set(range(20))))
    with pytest.raises(DatasetError, match="16 rows in a row could not be decoded"):
        list(StreamEpoch(flat, row_of, 0, 0, 0, 1, 4, 0, 1))


def losses(run) -> list[tuple[int, float]]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if "loss" in r]


def test_streamed_pretraining_resumes_exactly_and_evaluates_on_the_head(tmp_path, capsys):
    root = parquet_set(tmp_path / "pq")
    common = ["pretrain", "--method", "dino", "--data", str(root), "--no-progress", "--set", "model.depth=1",
              "--set", "data.options.streaming=true", "--set", "train.batch_size=8", "--set", "train.epochs=2",
              "--set", "data.num_workers=2", "--set", "train.freeze_last_layer=0"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "full")]) == 0
    full = losses(tmp_path / "full")
    assert [s for s, _ in full] == list(range(1, 9))  # 32 rows / batch 8 = 4 steps an epoch, 2 epochs
    assert main([*common, "--out", str(tmp_path / "part"), "--set", "train.max_steps=3"]) == 0
    assert main([*common, "--out", str(tmp_path / "part")]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert losses(tmp_path / "part") == full  # mid-epoch, two workers: the same images, the same views
    knn = ["eval", "knn", str(tmp_path / "full"), "--dataset", "hf", "--root", str(root), "--json", "--workers", "0"]
    assert main([*knn, "--k", "3", "--set", "data.options.eval_rows=6"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["train_images"], result["test_images"]) == (6, 6)  # eval_rows of each streamed split
