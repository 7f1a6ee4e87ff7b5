"""The ``imgclust`` command line: one Typer command per pipeline stage and per tool.

Each stage and tool module defines a thin ``command``; this module only registers them and turns
imgclust's exceptions into a message and exit code 2.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys

import typer

from imgclust.core.parallel import end_process
from imgclust.errors import ImgclustError


class _ConsoleApp(typer.Typer):
    """The app the ``imgclust`` console script and ``python -m imgclust`` call: once the command has
    ended, the process ends as Python would (other threads joined, exit handlers run, output
    flushed) but without tearing down its thousands of modules (MLflow, scikit-learn, matplotlib):
    measured on 2 busy cores, that teardown took 7 to 10 s of a train process's wall time (0.3 to 1.1 s
    of CPU) and 7 to 9 s of evaluate's. Tests run commands through Typer's CliRunner, which never
    calls this; a profiler or tracer keeps the usual exit."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except SystemExit as exc:
            if sys.getprofile() is None and sys.gettrace() is None:
                end_process(exc.code)
            raise


app = _ConsoleApp(
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
    "export": "imgclust.tools.export",
    "scan-k": "imgclust.tools.scan_k",
    "compare": "imgclust.tools.compare",
    "register": "imgclust.tools.register",
    "predict": "imgclust.tools.predict",
    "reproduce": "imgclust.tools.reproduce",
}


# third-party start-up noise kept out of the stage output (read by TensorFlow/absl when first imported)
THIRD_PARTY_LOG = "logs/tensorflow.log"  # in the project's .imgclust/: TensorFlow's native start-up lines
TENSORFLOW_TOOLS = ("predict",)  # tools that may run a CNN, besides the stages
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "GRPC_VERBOSITY": "ERROR", "GLOG_minloglevel": "2"}


def _exits_cleanly(func, stage: str | None = None, loads_tensorflow: bool = False):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from imgclust import config

        for name, value in QUIET_ENV.items():
            os.environ.setdefault(name, value)
        try:
            config.apply_local_settings()
            if loads_tensorflow:
                from imgclust.core.quiet import divert_tensorflow_import

                divert_tensorflow_import(config.local_dir() / THIRD_PARTY_LOG)
            result = func(*args, **kwargs)
        except ImgclustError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(code=2) from exc
        # evaluate logs its own figures with the run (it is not finished when it logs them)
        if stage and stage != "evaluate" and os.environ.get("DVC_STAGE"):
            from imgclust.core import stage_log

            stage_log.append(stage_log.measure(stage))
        return result

    return wrapper


@app.callback()
def _group() -> None:
    """Always a group of commands, even with one registered (Typer runs a lone command without its name)."""


def _register(names) -> None:
    for name, module_name in COMMANDS.items():
        if name not in names:
            continue
        module = importlib.import_module(module_name)
        stage = module_name.rsplit(".", 1)[1] if ".stages." in module_name else None
        loads_tensorflow = stage is not None or name in TENSORFLOW_TOOLS
        app.command(name, help=module.__doc__)(_exits_cleanly(module.command, stage, loads_tensorflow))


# the command named on the command line is all a process runs: only its module is imported (the
# others cost a stage process about 0.1 s); help and anything else see them all
_register([sys.argv[1]] if len(sys.argv) > 1 and sys.argv[1] in COMMANDS else COMMANDS)
