"""One spelling per idea across commands, help on every flag, and help without PyTorch."""

import subprocess
import sys

import pytest

from sslkd.cli import COMMANDS, build_parser, main
from sslkd.methods import METHODS


def _actions(parser, path=()):
    for action in parser._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict) and action.dest != "help":
            for name, sub in action.choices.items():
                yield from _actions(sub, (*path, name))
        else:
            yield path, action


def test_every_flag_has_help_and_one_spelling_per_idea():
    actions = list(_actions(build_parser()))
    assert set(p[0] for p, _ in actions if p) == set(COMMANDS)
    missing = [
        f"{' '.join(p)} {a.option_strings or a.dest}" for p, a in actions if a.help in (None, "") and a.dest != "help"
    ]
    assert not missing, missing
    flags = {f for _, a in actions for f in a.option_strings}
    assert not flags & {"--output", "--output_dir", "--img_size", "--batch_size", "--patch_size"}
    for cmd in ("pretrain", "demo", "experiment", "report", "export", "attention", "plot"):  # --out everywhere
        assert any("--out" in a.option_strings for p, a in actions if p and p[0] == cmd), cmd
    bench = {f for p, a in actions if p == ("bench",) for f in a.option_strings}
    assert {"--img-size", "--patch-size", "--batch-size"} <= bench and "--img" in bench  # the old spelling kept


def test_method_names_are_the_registry(capsys):
    """``--method`` checks against the registry itself (no copy to keep in sync)."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["pretrain", "--method", "dino2", "--data", "digits"])
    assert f"unknown method 'dino2'; available: {', '.join(sorted(METHODS))}" in capsys.readouterr().err
    for name in METHODS:
        assert build_parser().parse_args(["pretrain", "--method", name, "--data", "digits"]).method == name


def test_help_answers_without_importing_torch():
    """Every command but ``eval``, whose flags are the registered protocols' options, declared
    beside their code (so ``sslkd eval --help`` pays PyTorch's import, about 3 s)."""
    code = (
        "import sys; from sslkd.cli import main\n"
        "for c in [[]] + [[c] for c in sys.argv[1:]]:\n"
        "    try: main([*c, '--help'])\n"
        "    except SystemExit: pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    commands = [c for c in COMMANDS if c != "eval"]
    r = subprocess.run([sys.executable, "-c", code, *commands], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_eval_takes_the_run_as_others_do_and_data_keys(tmp_path, capsys):
    assert main(["eval", "knn", "--dataset", "digits"]) == 2
    assert "name one source" in capsys.readouterr().err
    assert main(["eval", "knn", "--random-init", "--dataset", "digits", "--set", "train.epochs=3"]) == 2
    assert "data.on_corrupt" in capsys.readouterr().err
    args = ["eval", "knn", "--random-init", "--dataset", "digits", "--set", "data.on_corrupt=skip", "--json"]
    assert main(args) == 0 and '"top1"' in capsys.readouterr().out
    assert main(["eval", "knn", str(tmp_path / "nope"), "--dataset", "digits"]) == 1
    assert "nope" in capsys.readouterr().err
