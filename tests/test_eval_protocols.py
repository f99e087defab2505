"""The evaluation protocols as registered objects: top-k counted in one place, the linear probe's
learning-rate sweep chosen on held-out training images, scikit-learn's logistic regression, typed
options shared by the CLI and the API."""

import numpy as np
import pytest
import torch

import sslkd
from sslkd.cli import build_parser
from sslkd.errors import ConfigError
from sslkd.eval import PROTOCOLS, evaluate, linear_probe, logistic_regression, options_of
from sslkd.eval.metrics import TopK, topk_accuracy
from sslkd.eval.training import train_steps, validation_split
from sslkd.models import build_backbone


def blobs(n_train=400, n_test=100, classes=5, dim=24, noise=1.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 2
    ltr, lte = torch.arange(n_train) % classes, torch.arange(n_test) % classes
    ftr = centres[ltr] + noise * torch.randn(n_train, dim, generator=g)
    fte = centres[lte] + noise * torch.randn(n_test, dim, generator=g)
    return ftr, ltr, fte, lte


def test_topk_counts_ties_and_batches_as_one():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.3, 0.3, 0.4]])
    labels = torch.tensor([1, 2, 2, 0])
    res = topk_accuracy(scores, labels)
    assert res == {"top1": 50.0, "top5": 100.0}  # three classes: top-5 is every class
    acc = TopK()
    for i in range(0, 4, 3):  # batches of 3 and 1 count as the whole
        acc.update(scores[i : i + 3], labels[i : i + 3])
    assert acc.result() == res
    many = torch.randn(200, 12, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 12, (200,), generator=torch.Generator().manual_seed(1))
    top5 = many.argsort(1, descending=True)[:, :5]
    assert topk_accuracy(many, y)["top5"] == pytest.approx(100 * (top5 == y[:, None]).any(1).float().mean().item())


def test_validation_split_is_class_balanced_disjoint_and_complete():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 2)
    fit, val = validation_split(labels, 0.1, seed=3)
    assert set(fit.tolist()).isdisjoint(val.tolist()) and sorted(fit.tolist() + val.tolist()) == list(range(82))
    assert np.bincount(labels[val].numpy()).tolist() == [5, 3, 1]  # a class of two keeps one to fit
    assert torch.equal(validation_split(labels, 0.1, seed=3)[1], val)  # seeded


def test_train_steps_sets_each_groups_rate_from_its_base():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.5}], lr=1.0)
    seen = []

    def loss_of(x, y):
        seen.append([g["lr"] for g in opt.param_groups])
        return (a + b).sum() * x.sum()

    scales = torch.tensor([1.0, 0.5, 0.25, 0.0])
    losses = train_steps(loss_of, opt, 2, lambda e: [(torch.ones(1), None)] * 2, 2, scales)
    assert seen == [[1.0, 0.5], [0.5, 0.25], [0.25, 0.125], [0.0, 0.0]] and len(losses) == 2
    assert a.item() == pytest.approx(-1.75) and b.item() == pytest.approx(-0.875)  # sum of its rates


def test_linear_sweep_chooses_on_held_out_training_images_and_refits():
    ftr, ltr, fte, lte = blobs(noise=5.0)  # overlapping classes: the rates score differently
    res = linear_probe(ftr, ltr, fte, lte, epochs=10, lr=[1e-4, 1.0])
    assert set(res["val_top1"]) == {"0.0001", "1"} and res["val_top1"]["1"] > res["val_top1"]["0.0001"]
    assert res["lr"] == 1.0  # the better on the held-out images
    # the chosen rate, fitted alone on the whole training split: the same figures (one pass = separate fits)
    alone = linear_probe(ftr, ltr, fte, lte, epochs=10, lr=1.0)
    assert (alone["top1"], alone["top5"]) == (res["top1"], res["top5"]) and "val_top1" not in alone
    # the test labels never choose: scrambled, the same held-out figures and rate
    scrambled = linear_probe(ftr, ltr, fte, lte[torch.randperm(100)], epochs=10, lr=[1e-4, 1.0])
    assert scrambled["val_top1"] == res["val_top1"] and scrambled["lr"] == 1.0
    with pytest.raises(ValueError, match="val_fraction"):
        linear_probe(ftr, ltr, fte, lte, epochs=1, lr=[0.1, 1.0], val_fraction=0.0)


def test_logistic_regression_learns_and_chooses_c_on_held_out_images():
    ftr, ltr, fte, lte = blobs(noise=5.0)  # overlapping classes: C matters
    res = logistic_regression(ftr, ltr, fte, lte, C=[1e-4, 1.0])
    assert res["top1"] > 60 and res["C"] == 1.0 and res["val_top1"]["1"] > res["val_top1"]["0.0001"]
    chance = logistic_regression(ftr, ltr[torch.randperm(400)], fte, lte, C=1.0)
    assert chance["top1"] < 45 and "val_top1" not in chance


def test_options_are_typed_name_the_valid_keys_and_take_one_value_as_a_list():
    assert {"knn", "linear", "logreg", "finetune"} <= set(PROTOCOLS)
    assert options_of("knn", {"k": 5}).k == (5,)
    assert options_of("linear", {"lr": [0.1, 1]}).lr == (0.1, 1.0)
    with pytest.raises(ConfigError, match=r"unknown config key 'linear\.epoch'.*did you mean epochs"):
        options_of("linear", {"epoch": 3})
    with pytest.raises(ConfigError, match=r"knn\.k\[1\]: must be > 0"):
        options_of("knn", {"k": [10, 0]})
    with pytest.raises(ConfigError, match="unknown protocol 'svm'; available: knn"):
        options_of("svm")
    with pytest.raises(ConfigError, match="finetune.label_fraction"):
        sslkd.evaluate(torch.nn.Identity(), "digits", protocol="finetune", label_fraction=2.0)


def test_every_protocol_and_option_is_a_flag_of_sslkd_eval():
    parser = build_parser(only={"eval"})
    for name, protocol in PROTOCOLS.items():
        args = parser.parse_args(["eval", name, "--random-init", "--dataset", "digits"])
        assert args.protocol == name
        for f in protocol.Options.__dataclass_fields__:
            assert hasattr(args, f"option_{f}"), (name, f)
    args = parser.parse_args(
        ["eval", "linear", "--random-init", "--dataset", "digits", "--lr", "0.1,1", "--val-fraction", "0.2"]
    )
    assert args.option_lr == (0.1, 1.0) and args.option_val_fraction == 0.2


def test_evaluate_scores_several_protocols_on_one_extraction_and_leaves_the_backbone(tmp_path):
    from sslkd.data import get_dataset

    train = get_dataset("digits", "train", img_size=16)
    test = get_dataset("digits", "test", img_size=16)
    torch.manual_seed(0)
    backbone = build_backbone("vit_tiny", 16, 8, 1, depth=1)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    asked = {"knn": {"k": [5]}, "linear": {"epochs": 3, "lr": [0.1]}, "logreg": {"C": [1.0]}, "finetune": {"epochs": 1}}
    res = evaluate(backbone, train, test, asked, max_train=300, max_test=100, batch_size=64)
    assert set(asked) <= set(res) and (res["train_images"], res["test_images"]) == (300, 100)
    assert all(0 <= res[p]["top1"] <= res[p]["top5"] <= 100 for p in asked)
    assert res["knn"]["k"] == 5 and res["linear"]["lr"] == 0.1 and res["logreg"]["C"] == 1.0
    assert res["finetune"]["train_images"] == 300  # fine-tuning sees the same evenly spaced subset
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())  # a copy was trained


def test_the_training_monitor_names_unknown_and_trained_protocols():
    from types import SimpleNamespace

    from sslkd.config import load_config
    from sslkd.train.monitor import Monitor

    data = SimpleNamespace(num_classes=10)
    for protocols, message in (("[knn,svm]", "unknown protocol 'svm'; available: knn"), ("[finetune]", "trains")):
        cfg = load_config(None, [f"eval.protocols={protocols}"])
        with pytest.raises(ConfigError, match=message):
            Monitor(cfg, data, None, torch.device("cpu"))
    assert set(Monitor(load_config(None, ["eval.protocols=[linear]"]), data, None, "cpu").protocols) == {"linear"}


def test_a_protocol_defined_outside_sslkd_reaches_the_cli_the_api_and_tables():
    from dataclasses import dataclass, field

    from sslkd.eval import registry
    from sslkd.schema import Positive

    @dataclass
    class CentroidOptions:
        max_per_class: Positive = field(default=1000, metadata={"help": "training images per class mean"})

    class CentroidProtocol(registry.Protocol):  # docs/extending.md's example
        name, help, Options, title = "centroid", "nearest class mean", CentroidOptions, "Centroid"

        def score(self, features, options):
            classes = range(features.num_classes)
            per_class = [features.train[features.train_labels == c][: options.max_per_class] for c in classes]
            means = torch.stack([f.mean(0) for f in per_class])
            return topk_accuracy(-torch.cdist(features.test, means), features.test_labels)

    registry.register(CentroidProtocol)
    try:
        args = build_parser(only={"eval"}).parse_args(
            ["eval", "centroid", "--random-init", "--dataset", "digits", "--max-per-class", "5"]
        )
        assert args.option_max_per_class == 5
        from sslkd.data import get_dataset

        train, test = get_dataset("digits", "train", img_size=8), get_dataset("digits", "test", img_size=8)
        raw = torch.nn.Flatten()  # raw pixels: the class means classify digits well
        res = evaluate(raw, train, test, {"centroid": {"max_per_class": 50}, "knn": {"k": [10]}})
        assert res["centroid"]["top1"] > 80 and res["knn"]["top1"] > 80
        assert registry.get_protocol("centroid").columns({**res["centroid"], "per": {}}) == res["centroid"]
    finally:
        registry.PROTOCOLS.pop("centroid")
