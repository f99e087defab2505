"""`sslkd eval finetune`: layer-wise learning-rate decay, label fractions, and a model that learns."""

import json

import torch

from sslkd.cli import main
from sslkd.config import load_config
from sslkd.data import get_dataset
from sslkd.eval.finetune import finetune, layer_decay_groups
from sslkd.models import build_backbone
from sslkd.train import Trainer


def test_layer_decay_scales_rates_from_head_down_to_patch_embedding():
    bb = build_backbone("vit_tiny", 16, 4, depth=3)
    head = torch.nn.Linear(bb.embed_dim, 10)
    groups = layer_decay_groups(bb, head, 0.05, 0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert scale[id(head.weight)] == 1.0
    blocks = [scale[id(b.attn.qkv.weight)] for b in bb.vit.blocks]
    assert blocks == [0.125, 0.25, 0.5], blocks  # x0.5 per block below the head
    assert scale[id(bb.vit.patch_embed.proj.weight)] == scale[id(bb.mask_token)] == 0.0625
    every = {id(p) for p in list(bb.parameters()) + list(head.parameters())}
    assert every == set(scale)  # nothing left out (the mask token included)
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert wd[id(bb.vit.blocks[0].norm1.weight)] == 0.0 and wd[id(bb.vit.blocks[0].attn.qkv.weight)] == 0.05


def test_finetune_learns_and_label_fraction_is_class_balanced():
    train = get_dataset("synthetic", "train", img_size=16, num_samples=400)
    test = get_dataset("synthetic", "test", img_size=16, num_samples=200)
    torch.manual_seed(0)
    bb = build_backbone("vit_tiny", 16, 4, depth=1)
    res = finetune(
        bb, train, test, train.mean, train.std, epochs=6, batch_size=32, lr=2e-3, warmup_epochs=1, precision="fp32"
    )
    assert res["top1"] > 100 / train.num_classes + 30, res  # far above chance
    assert res["epoch_loss"][-1] < res["epoch_loss"][0]
    few = finetune(
        build_backbone("vit_tiny", 16, 4, depth=1),
        train,
        test,
        train.mean,
        train.std,
        epochs=1,
        batch_size=8,
        label_fraction=0.1,
        precision="fp32",
    )
    assert few["train_images"] == 40 and few["label_fraction"] == 0.1


def test_cli_finetune_writes_the_result_into_the_run(tmp_path, capsys):
    data = get_dataset("synthetic", "train", img_size=16, num_samples=32)
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            "method.name=dino",
            "data.name=synthetic",
            "model.depth=1",
            "method.out_dim=32",
            "method.hidden_dim=32",
            "method.bottleneck_dim=16",
            "train.batch_size=8",
            "train.max_steps=1",
            "device=cpu",
            "data.img_size=16",
        ],
    )
    Trainer(cfg, data, progress=False).fit()
    assert (
        main(
            [
                "eval",
                "finetune",
                "--checkpoint",
                str(tmp_path / "run"),
                "--dataset",
                "synthetic",
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--label-fraction",
                "0.5",
                "--json",
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "run" / "finetune_0.5.json").read_text())
    assert res["protocol"] == "finetune" and 0 <= res["top1"] <= 100 and res["label_fraction"] == 0.5
    # a second trial moves the earlier result aside instead of erasing it
    assert (
        main(
            [
                "eval",
                "finetune",
                "--checkpoint",
                str(tmp_path / "run"),
                "--dataset",
                "synthetic",
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--label-fraction",
                "0.5",
            ]
        )
        == 0
    )
    kept = sorted((tmp_path / "run").glob("finetune_0.5.*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == res
    assert "previous result was kept" in capsys.readouterr().out
