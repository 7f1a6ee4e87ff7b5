"""Reproduce a colleague's MLflow run: clone the project at the run's commit, restore the run's
parameters, re-run the pipeline, and compare its metrics and data hashes with the logged ones."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import typer

from imgclust import config
from imgclust.errors import ParamError, ReproductionError, ReproductionMismatchError
from imgclust.tracking import runs, store
from imgclust.tracking.naming import (
    DATA_TAG_PREFIX,
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    flatten,
    is_stage_metric,
    param_value,
    parse_param_value,
    set_dotted,
    split_metrics,
)

# variables that would make the reproduction log to (or resolve the store of) somewhere else
SCRUBBED_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_RUN_ID",
    "DVC_ROOT",
    "DVC_EXP_NAME",
    "DVC_EXP_BASELINE_REV",
)


@dataclasses.dataclass(frozen=True)
class Check:
    """One compared value: a metric, or the content hash of one data output."""

    name: str
    logged: object
    reproduced: object
    match: bool


@dataclasses.dataclass
class ReproduceResult:
    run_id: str
    repo: str
    workdir: Path
    git_commit: str
    git_dirty: bool
    params_restored: dict[str, tuple[object, object]]  # dotted key -> (commit's value, run's value)
    source_rewritten: str | None  # data.source made absolute (it pointed outside the repository)
    pulled: bool | None  # None: no DVC remote configured (or --no-pull)
    metrics: list[Check]
    hashes: list[Check]
    new_run_id: str | None

    @property
    def mismatches(self) -> list[Check]:
        return [c for c in (*self.metrics, *self.hashes) if not c.match]

    @property
    def matches(self) -> bool:
        return bool(self.metrics or self.hashes) and not self.mismatches


# ------------------------------------------------------------------------------------------ the run


def fetch_run(run_id: str):
    """The MLflow run from the project's store (or MLFLOW_TRACKING_URI)."""
    store.configure()
    return store.fetch_run(run_id)


# ---------------------------------------------------------------------------------------- parameters


def restore_params(base: dict, logged: dict[str, str]) -> tuple[dict, dict[str, tuple[object, object]]]:
    """``base`` (the commit's params.yaml) with every logged value that differs put back in place.

    Returns the new nested params and {dotted key: (old, new)} of the keys that changed; keys
    absent from ``base`` are created.
    """
    import copy

    params = copy.deepcopy(base)
    current = flatten(base)
    changed: dict[str, tuple[object, object]] = {}
    for key, text in sorted(logged.items()):
        old = current.get(key)
        if key in current and param_value(old) == text:
            continue  # unchanged: keep the commit's value with its exact type and formatting
        new = parse_param_value(text, old)
        if key in current and new == old:
            continue
        set_dotted(params, key, new)
        changed[key] = (old, new)
    return params, changed


# ---------------------------------------------------------------------------------------- comparison


def compare_values(
    logged: dict[str, object], reproduced: dict[str, object], tolerance: float | None = None
) -> list[Check]:
    """One Check per key of either side; numbers within ``tolerance`` (relative or absolute) match."""
    checks = []
    for name in sorted(set(logged) | set(reproduced)):
        a, b = logged.get(name), reproduced.get(name)
        if tolerance is not None and isinstance(a, (int, float)) and isinstance(b, (int, float)):
            match = math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)
        else:
            match = a is not None and a == b
        checks.append(Check(name, a, b, match))
    return checks


def check(result: ReproduceResult) -> None:
    """Raise ReproductionMismatchError unless every metric and data hash was reproduced."""
    if not (result.metrics or result.hashes):
        raise ReproductionMismatchError(f"run {result.run_id} logged no metric and no data hash to compare with.")
    if result.mismatches:
        names = ", ".join(c.name for c in result.mismatches[:8])
        more = f" and {len(result.mismatches) - 8} more" if len(result.mismatches) > 8 else ""
        raise ReproductionMismatchError(
            f"run {result.run_id} NOT reproduced: {len(result.mismatches)} value(s) differ ({names}{more}); "
            f"the re-run is kept in {result.workdir}."
        )


def format_result(result: ReproduceResult) -> str:
    def show(value) -> str:
        if value is None:
            return "-"
        return f"{value:.6g}" if isinstance(value, float) else str(value)

    lines = [f"run {result.run_id}: commit {result.git_commit[:12]} of {result.repo}, re-run in {result.workdir}"]
    if result.git_dirty:
        lines.append(
            "  note: the run was logged with uncommitted changes (git_dirty); only its parameters "
            "are restored (dvc.lock and params.yaml changes are expected during a pipeline run)"
        )
    for key, (old, new) in result.params_restored.items():
        lines.append(f"  param {key}: {old!r} (commit) -> {new!r} (run)")
    if result.source_rewritten:
        lines.append(f"  data.source outside the repository, read from {result.source_rewritten}")
    if result.pulled is not None:
        lines.append(f"  dvc pull: {'ok' if result.pulled else 'failed or partial; missing outputs recomputed'}")
    rows = [("", "logged", "reproduced", "")]
    rows += [
        (c.name, show(c.logged), show(c.reproduced), "ok" if c.match else "DIFFERS")
        for c in (*result.metrics, *result.hashes)
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if result.new_run_id:
        lines.append(f"  the re-run was logged as run {result.new_run_id} in {result.workdir / 'mlruns'}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- the re-run


def _run(args: list[str], cwd: Path, env: dict | None = None, what: str = "") -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout[-2000:] + "\n" + proc.stderr[-2000:]).strip()
        raise ReproductionError(f"{what or ' '.join(args)} failed in {cwd} (exit {proc.returncode}):\n{tail}")
    return proc


def _tool(name: str) -> str:
    """A tool of this environment (dvc), so the re-run uses the same installation as imgclust."""
    exe = Path(sys.executable).with_name(name)
    return str(exe) if exe.exists() else name


def _stage_env(workdir: Path) -> dict[str, str]:
    """The re-run's environment: this interpreter's tools first on PATH, the checked-out commit's
    ``src`` first on PYTHONPATH (the stages then run the commit's code, not the installed one), and
    no variable that would log the re-run elsewhere than ``<workdir>/mlruns``."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    src = workdir / "src"
    if (src / "imgclust").is_dir():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH", "")) if p)
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def default_repo() -> str:
    """The git repository of the current project."""
    root = store.project_root()
    proc = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ParamError(f"{root} is not a git repository; pass --repo URL_OR_PATH of the project.")
    return proc.stdout.strip()


def clone_at(repo: str, workdir: Path, commit: str) -> None:
    """``git clone`` ``repo`` into ``workdir`` and check out ``commit``.

    A commit that no branch reaches (e.g. a DVC experiment's) is not in a plain clone: fetch DVC's
    experiment refs and the commit itself before giving up.
    """
    _run(["git", "clone", "--quiet", repo, str(workdir)], cwd=workdir.parent, what=f"git clone {repo}")
    checkout = ["git", "-c", "advice.detachedHead=false", "checkout", "--quiet", commit]
    if subprocess.run(checkout, cwd=workdir, capture_output=True).returncode == 0:
        return
    for refspec in ("+refs/exps/*:refs/exps/*", commit):
        subprocess.run(["git", "fetch", "--quiet", "origin", refspec], cwd=workdir, capture_output=True)
    if subprocess.run(checkout, cwd=workdir, capture_output=True).returncode != 0:
        raise ReproductionError(
            f"commit {commit} is not in {repo}: push it (or the branch holding it), "
            "or pass --repo with a repository that has it."
        )


def _prepare_workdir(workdir: Path | None, run_id: str) -> Path:
    import tempfile

    if workdir is None:
        return Path(tempfile.mkdtemp(prefix=f"imgclust-reproduce-{run_id[:8]}-")) / "project"
    workdir = Path(workdir).resolve()
    if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
        raise ParamError(f"{workdir}: exists and is not an empty folder; pass a new --workdir.")
    workdir.parent.mkdir(parents=True, exist_ok=True)
    return workdir


def _outside_source(params: dict, workdir: Path, repo: str) -> str | None:
    """A relative data.source that leaves the repository (``../dataset``) names a folder next to
    the ORIGINAL checkout, not next to the clone: resolve it against the original when it is local."""
    source = (params.get("data") or {}).get("source")
    if not isinstance(source, str) or os.path.isabs(source) or not Path(repo).is_dir():
        return None
    if not os.path.normpath(source).startswith(".."):
        return None  # inside the repository: git, DVC pull or the pipeline provides it
    original = (Path(repo) / source).resolve()
    return str(original) if original.exists() and not (workdir / source).exists() else None


def _evaluate_outputs(workdir: Path) -> tuple[Path, Path]:
    """(metrics file, MLflow run-info file) of the evaluate stage, as the checked-out dvc.yaml wires them:
    its metrics entry and the ``--run-info`` path of its command."""
    import shlex

    import yaml

    stage = ((yaml.safe_load((workdir / "dvc.yaml").read_text()) or {}).get("stages") or {}).get("evaluate") or {}
    names = [next(iter(entry)) if isinstance(entry, dict) else entry for entry in stage.get("metrics", [])]
    words = shlex.split(str(stage.get("cmd", "")))
    run_info = words[words.index("--run-info") + 1] if "--run-info" in words[:-1] else "reports/mlflow_run.json"
    return workdir / (names[0] if names else "metrics.json"), workdir / run_info


def reproduce_run(
    run_id: str,
    repo: str | None = None,
    workdir: Path | None = None,
    *,
    pull: bool = True,
    tolerance: float = 1e-9,
    log: Callable[[str], None] | None = None,
) -> ReproduceResult:
    """Re-run MLflow run ``run_id`` from its commit and parameters in a fresh clone; compare.

    The clone is of ``repo`` (default: the current project's repository) in ``workdir`` (default:
    a new temporary folder; it must not exist or be empty). DVC outputs are pulled first when the
    commit configures a remote (a failed pull only means more is recomputed), then ``dvc repro``
    recomputes whatever the restored parameters change. The re-run logs its own MLflow run to the
    clone's local store, never to the original store or MLFLOW_TRACKING_URI.
    """
    import json

    import yaml

    say = log or (lambda message: None)
    run = fetch_run(run_id)
    tags, logged_params = run.data.tags, run.data.params
    commit = tags.get(GIT_COMMIT_TAG)
    if not commit:
        raise ReproductionError(
            f"run {run_id} has no git_commit tag (it was not logged from a git "
            "repository), so its code cannot be checked out."
        )
    repo = repo or default_repo()
    if Path(repo).exists():  # a local path: absolute, since git clone runs elsewhere
        repo = str(Path(repo).resolve())
    workdir = _prepare_workdir(workdir, run_id)

    say(f"reproduce: cloning {repo} at {commit[:12]} into {workdir}")
    clone_at(repo, workdir, commit)
    params_file = workdir / "params.yaml"
    base = yaml.safe_load(params_file.read_text()) if params_file.is_file() else {}
    params, changed = restore_params(base or {}, logged_params)
    source = _outside_source(params, workdir, repo)
    if source:
        params["data"]["source"] = source
    if changed or source:
        # logged values come from a shared store: they must pass the schema, and are written as YAML
        # data (never as command text); the stages read them from there
        config.validate(params, origin=f"the parameters of run {run_id} applied to {params_file}")
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))

    env = _stage_env(workdir)
    dvc = _tool("dvc")
    pulled = None
    remotes = subprocess.run([dvc, "remote", "list"], cwd=workdir, env=env, capture_output=True, text=True)
    if pull and remotes.returncode == 0 and remotes.stdout.strip():
        say("reproduce: dvc pull")
        pulled = subprocess.run([dvc, "pull"], cwd=workdir, env=env, capture_output=True).returncode == 0
    say("reproduce: dvc repro")
    _run([dvc, "repro"], cwd=workdir, env=env, what="dvc repro")

    metrics_file, run_info = _evaluate_outputs(workdir)
    reproduced = split_metrics(json.loads(metrics_file.read_text())) if metrics_file.is_file() else {}
    hashes = {k: v for k, v in tags.items() if k.startswith(DATA_TAG_PREFIX)}
    new_run_id = json.loads(run_info.read_text()).get("run_id") if run_info.is_file() else None
    return ReproduceResult(
        run_id=run_id,
        repo=repo,
        workdir=workdir,
        git_commit=commit,
        git_dirty=tags.get(GIT_DIRTY_TAG) == "true",
        params_restored=changed,
        source_rewritten=source,
        pulled=pulled,
        # the scores, not the stages' time and memory: those measure the machine
        metrics=compare_values(
            {k: v for k, v in run.data.metrics.items() if not is_stage_metric(k)}, reproduced, tolerance
        ),
        hashes=compare_values(hashes, runs.dvc_lock_hashes(workdir / "dvc.lock")),
        new_run_id=new_run_id,
    )


def command(
    run_id: str = typer.Argument(..., help="MLflow run id to reproduce (see `imgclust compare`)."),
    repo: str = typer.Option(None, help="git URL or path of the project (default: this project's repository)."),
    workdir: Path = typer.Option(None, help="New or empty folder for the clone (default: a new temporary folder)."),
    pull: bool = typer.Option(True, "--pull/--no-pull", help="dvc pull first when the commit configures a remote."),
    tolerance: float = typer.Option(1e-9, help="Relative/absolute tolerance on metrics."),
) -> None:
    result = reproduce_run(
        run_id, repo, workdir, pull=pull, tolerance=tolerance, log=lambda message: typer.echo(message, err=True)
    )
    typer.echo(format_result(result))
    check(result)
    typer.echo(
        f"reproduce: run {run_id} reproduced: {len(result.metrics)} metrics and "
        f"{len(result.hashes)} data hashes identical."
    )
