"""What each paper's ImageNet-1k config costs: training FLOPs and memory per image, fixed memory.

For every ``configs/*/imagenet1k_*.yaml``, optimiser steps at batch 3 and 6 on generated 224-px
photos (the config's own crops, heads and teachers; random teacher weights of the right
architecture) run under ``torch.utils.flop_counter``'s formulas (matmuls, convolutions, attention:
forward and backward, teachers included; see :class:`Flops`) and ``saved_tensors_hooks`` (bytes
autograd keeps for the backward, in the config's precision, each storage once, parameters not
again). The difference of the two steps is the cost of an image; a step also keeps weight copies
once a call: a constant. FLOPs are scaled to whole runs (images x epochs); memory to 64 images a
GPU, with weights, gradients and optimiser state (16 bytes a trained parameter under AdamW, 12
under SGD) and EMA / frozen teachers (4 bytes a parameter). Not counted: elementwise work (RKD-A's
B^3 angles over the global batch grow faster than the batch and are not in the difference), DDP
buckets, the CUDA context, allocator slack.

GPU-hours are FLOPs over a sustained rate, calibrated on the one run a paper timed: MOKD R50 +
ViT-S/16, 100 epochs, 122 h on 8 V100s (MOKD Suppl. C.3, Table S3). Printed as JSON lines.

    python benchmarks/paper_configs.py > benchmarks/results/paper_configs_cpu.jsonl
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from importlib import resources
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from torch.ops import aten
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import conv_flop_count, flop_registry, sdpa_backward_flop_count, sdpa_flop_count

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from test_shards import make_imagenet  # noqa: E402

from sslkd.config import config_path, load_config  # noqa: E402
from sslkd.train import Trainer  # noqa: E402
from sslkd.train.inputs import load_datasets  # noqa: E402

IMAGENET = 1_281_167
CALIBRATION = ("mokd/imagenet1k_resnet50_vits16", 122 * 8)  # V100-hours measured by the paper


class Flops(TorchDispatchMode):
    """FlopCounterMode's per-operator formulas without its module tracker (which fails on MOKD's
    T-Heads fed by the other model's tensors), with two corrections: a grouped convolution's
    backward (the registry counts depthwise convolutions' weight gradients as dense) and the CPU
    flash-attention kernels timm's fused attention runs here (not in the registry)."""

    total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func._overloadpacket
        if packet is aten.convolution_backward:  # grad_out, x, w, ..., transposed (7), ..., mask (10)
            grad_out, x, w, transposed, mask = args[0], args[1], args[2], args[7], args[10]
            fwd = conv_flop_count(list(x.shape), list(w.shape), list(grad_out.shape), transposed)
            self.total += fwd * (int(mask[0]) + int(mask[1]))  # each gradient costs a forward
        elif packet is aten._scaled_dot_product_flash_attention_for_cpu:
            q, k, v = args[:3]
            self.total += sdpa_flop_count(q.shape, k.shape, v.shape)
        elif packet is aten._scaled_dot_product_flash_attention_for_cpu_backward:
            grad_out, q, k, v = args[:4]
            self.total += sdpa_backward_flop_count(grad_out.shape, q.shape, k.shape, v.shape)
        elif packet in flop_registry:
            self.total += flop_registry[packet](*args, **(kwargs or {}), out_val=out)
        return out


def measure(name: str, root: Path, files: Path) -> dict:
    extra = []
    if name.startswith("seed/"):
        extra = [f"method.teacher={files / 'moco.pth.tar'}"]
    if name.startswith("dmt/"):
        vitb = files / "vitb16.safetensors"
        extra = [f"method.teachers=[{vitb},{vitb},{vitb}]", "method.teacher_arch=vit_base"]
    paper = load_config(config_path(name), [])
    cfg = load_config(config_path(name), [f"data.root={root}", "data.num_workers=0", "train.batch_size=6", *extra])
    cfg.output_dir = str(files / name.replace("/", "_"))
    train, _ = load_datasets(cfg)
    trainer = Trainer(cfg, train, progress=False)
    views = next(trainer.batches(0, 0))
    params = {p.untyped_storage().data_ptr() for p in trainer.method.parameters()}
    cost = {}
    for b in (3, 6):  # per image: the difference (weights saved once a call are a step's constant)
        saved, seen = [0], set(params)  # each storage once; parameters are counted below

        def pack(t, saved=saved, seen=seen):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in seen:
                seen.add(ptr)
                saved[0] += t.untyped_storage().nbytes()
            return t

        with Flops() as counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            trainer.train_step([[v[:b] for v in views]])
        cost[b] = (counter.total, saved[0])
    flops = (cost[6][0] - cost[3][0]) / 3
    act = (cost[6][1] - cost[3][1]) / 3
    act_fixed = cost[3][1] - 3 * act
    method = trainer.method
    trained = {id(p) for _, p in method.trainable_parameters()}
    n_trained = sum(p.numel() for _, p in method.trainable_parameters())
    n_other = sum(p.numel() for p in method.parameters() if id(p) not in trained)
    n_other += sum(b.numel() for b in method.buffers() if b.is_floating_point() and b.numel() > 1_000_000)  # queues
    # weights + gradients (8 bytes) and the optimiser's moments: AdamW 2, SGD with momentum 1
    state = sum(
        (8 + (4 if isinstance(opt, torch.optim.SGD) else 8)) * p.numel()
        for opt in trainer.optimizers
        for group in opt.param_groups
        for p in group["params"]
    )
    fixed_gb = (state + 4 * n_other + act_fixed) / 1e9
    epochs = paper.train.epochs
    return {
        "config": name,
        "epochs": epochs,
        "batch": paper.train.batch_size,
        "gflop_per_image": flops / 1e9,
        "run_pflop": flops * IMAGENET * epochs / 1e15,
        "trained_params_m": n_trained / 1e6,
        "other_params_m": n_other / 1e6,
        "memory_fixed_gb": fixed_gb,  # weights, gradients, AdamW moments, teachers, a step's weight copies
        "memory_gb_per_image": act / 1e9,  # activations kept for the backward pass
        "memory_gb_at_64_per_gpu": fixed_gb + 64 * act / 1e9,
    }


def main() -> None:
    names = sorted(
        f"{p.parent.name}/{p.stem}" for p in Path(str(resources.files("sslkd") / "configs")).glob("*/imagenet1k_*.yaml")
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = make_imagenet(Path(tmp) / "imagenet", classes=2, per_class=3, val_per_class=1)
        files = Path(tmp)
        r50 = timm.create_model("resnet50", num_classes=0).state_dict()
        mlp = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 128))
        r50.update({f"fc.{k}": v for k, v in mlp.state_dict().items()})  # MoCo v2's projection MLP
        moco = {f"module.encoder_{e}.{k}": v for e in "qk" for k, v in r50.items()}
        torch.save({"state_dict": moco}, files / "moco.pth.tar")
        vitb = timm.create_model("vit_base_patch16_224", num_classes=0)
        save_file(vitb.state_dict(), str(files / "vitb16.safetensors"))
        with contextlib.redirect_stdout(sys.stderr):  # the trainers' load reports: stdout is the JSON
            rows = [measure(n, root, files) for n in names]
    cal = next(r for r in rows if r["config"] == CALIBRATION[0])
    rate = cal["run_pflop"] * 1e15 / (CALIBRATION[1] * 3600)  # sustained FLOP/s of one V100 in that run
    for r in rows:
        r["v100_hours"] = r["run_pflop"] * 1e15 / rate / 3600
        r["calibration_tflops_per_v100"] = rate / 1e12
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}))


if __name__ == "__main__":
    main()
