"""The errors sslkd raises for things a user can fix; each message names the key, file or value
and what to do. The CLI prints them in one line (no traceback)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot be run; the message names the offending key."""


class DatasetError(RuntimeError):
    """A dataset that cannot be read; the message names the path and what was expected."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read."""


class TeacherError(ValueError):
    """A teacher that cannot be loaded as asked; the message says why and what to do."""


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, ...); the message says where."""


class DivergedError(TrainingError):
    """A loss term became non-finite: the run stopped, its last finite checkpoint kept (the CLI
    exits with :data:`DIVERGED_EXIT`)."""


class Aborted(KeyboardInterrupt):
    """A second Ctrl-C / SIGTERM: the run stops at once, without a checkpoint (the CLI exits with
    128 + the signal's number, as a shell does)."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(signum, step)
        self.signum, self.step = signum, step


DIVERGED_EXIT = 3  # sslkd's exit status for a diverged run (1: other errors, 2: config errors)


class NoSuchModelError(ValueError):
    """A model index a method does not have (MOKD trains two models, the others one)."""


USER_ERRORS = (ConfigError, DatasetError, CheckpointError, TeacherError, TrainingError)
