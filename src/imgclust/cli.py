"""The ``imgclust`` command line: one Typer command per pipeline stage.

Each stage module exposes a pure function and a thin ``command`` wrapper; this module only
registers them and turns imgclust's exceptions into a message and a non-zero exit.
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

# command name -> module defining ``command`` (the pipeline stages, then the tools around runs); modules are imported here, so they must stay cheap
# at import time (heavy libraries such as TensorFlow and MLflow are imported inside functions).
COMMANDS = {
    "synthesize": "imgclust.synthesize",
    "ingest": "imgclust.ingest",
    "strip-masks": "imgclust.strip_masks",
    "resize": "imgclust.resize",
    "split": "imgclust.split",
    "augment": "imgclust.augment",
    "featurize": "imgclust.featurize",
    "train": "imgclust.train",
    "evaluate": "imgclust.evaluate",
    "scan-k": "imgclust.kscan",
    "compare": "imgclust.compare",
    "register": "imgclust.registry",
    "predict": "imgclust.predict",
    "reproduce": "imgclust.reproduce",
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


@app.callback()
@_exits_cleanly
def _check_params_file() -> None:
    """Refuse an invalid ./params.yaml before any command runs, so no stage under `dvc repro` starts
    work on bad parameters. Set IMGCLUST_SKIP_PARAMS_CHECK=1 to skip the check."""
    import os
    import sys
    from pathlib import Path

    params_file = Path("params.yaml")
    # a subcommand's --help is not visible to this callback in click's context: look at argv
    if os.environ.get("IMGCLUST_SKIP_PARAMS_CHECK") or not params_file.is_file() or "--help" in sys.argv[1:]:
        return
    from imgclust.params import load_params

    load_params(params_file)


def _register() -> None:
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        app.command(name, help=module.__doc__)(_exits_cleanly(module.command))


_register()
