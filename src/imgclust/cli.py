"""The ``imgclust`` command line: one Typer command per pipeline stage and per tool.

Each stage and tool module defines a thin ``command``; this module only registers them and turns
imgclust's exceptions into a message and exit code 2.
"""

from __future__ import annotations

import functools
import importlib

import typer

from imgclust.errors import ImgclustError

app = typer.Typer(
    name="imgclust",
    help="Reproducible, versioned, unsupervised image clustering (DVC + MLflow).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# command name -> module defining ``command``: the pipeline stages (dvc.yaml), then the tools around
# runs. Modules are imported here, so they stay cheap at import time (heavy libraries such as
# TensorFlow and MLflow are imported inside functions).
COMMANDS = {
    "synthesize": "imgclust.stages.synthesize",
    "ingest": "imgclust.stages.ingest",
    "strip-masks": "imgclust.stages.strip_masks",
    "resize": "imgclust.stages.resize",
    "split": "imgclust.stages.split",
    "augment": "imgclust.stages.augment",
    "featurize": "imgclust.stages.featurize",
    "train": "imgclust.stages.train",
    "evaluate": "imgclust.stages.evaluate",
    "scan-k": "imgclust.tools.scan_k",
    "compare": "imgclust.tools.compare",
    "register": "imgclust.tools.register",
    "predict": "imgclust.tools.predict",
    "reproduce": "imgclust.tools.reproduce",
}


def _exits_cleanly(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ImgclustError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(code=2) from exc

    return wrapper


def _register() -> None:
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        app.command(name, help=module.__doc__)(_exits_cleanly(module.command))


_register()
