"""``sslkd``: self-supervised pretraining and distillation (pretrain, distill), evaluation (eval,
attention, analyze, plot, report), paper experiments (experiment), export, bench, demo, info.

Each command is a module of :mod:`sslkd.commands` that declares its flags next to its handler;
``main`` imports only the module of the command it runs, so ``sslkd --help`` does not load
PyTorch."""

from __future__ import annotations

import argparse
import importlib
import sys

from sslkd import __version__
from sslkd.errors import DIVERGED_EXIT, USER_ERRORS, Aborted, ConfigError, DivergedError

# command -> its one-line help; each is the module sslkd.commands.<command>
COMMANDS = {
    "pretrain": "self-supervised pretraining from a YAML config",
    "distill": "distil a frozen teacher into a student",
    "eval": "evaluate a frozen backbone",
    "demo": "pretrain DINO on the embedded digits data and compare kNN",
    "plot": "figures from run folders",
    "attention": "last-block CLS attention of every head (PNG grid)",
    "analyze": "MOKD's analyses on any checkpoints (RUN or RUN@2 for MOKD's model 2)",
    "experiment": "reproduce a paper's experiment",
    "report": "one self-contained HTML page for one or more runs",
    "data": "pack an image folder into WebDataset tar shards",
    "export": "the backbone alone as safetensors + timm config.json, or ONNX",
    "bench": "images/s of one training step and of the data pipeline (one JSON line)",
    "info": "versions, device, threads, datasets, methods",
}


def build_parser(only: set[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (``only``) one with those commands' flags and the others listed."""
    parser = argparse.ArgumentParser(prog="sslkd", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"sslkd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, what in COMMANDS.items():
        p = sub.add_parser(name, help=what, description=what)
        if only is None or name in only:
            importlib.import_module(f"sslkd.commands.{name}").add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(only={argv[0]} if argv and argv[0] in COMMANDS else set()).parse_args(argv)
    args.argv = argv  # as typed: a command can suggest the same line with a flag added
    try:
        return args.run(args)
    except ConfigError as e:
        print(f"sslkd: config error: {e}", file=sys.stderr)
        return 2
    except Aborted as e:
        print(f"sslkd: aborted at step {e.step} without a checkpoint (the last one written is kept)", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:  # outside a training run: nothing to save
        print("sslkd: interrupted", file=sys.stderr)
        return 130
    except DivergedError as e:
        print(f"sslkd: diverged: {e}", file=sys.stderr)
        return DIVERGED_EXIT
    except (*USER_ERRORS, ValueError, OSError, ImportError) as e:  # OSError: names the file; ImportError: an extra
        print(f"sslkd: error: {one_line(e)}", file=sys.stderr)
        return 1


def one_line(e: BaseException) -> str:
    """``e``'s message; raised in a loader worker, PyTorch re-raises it with the worker's whole
    traceback as its message: the original message alone (the traceback's last line)."""
    text = str(e)
    if "Original Traceback" in text:  # torch.utils.data's ExceptionWrapper
        text = text.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return text


if __name__ == "__main__":
    sys.exit(main())
