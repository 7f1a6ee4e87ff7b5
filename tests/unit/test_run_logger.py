"""runs.RunLogger's helper process (what the evaluate stage logs its run through): what goes wrong
there reaches the caller as the same error, or as a TrackingError naming the fix, never as a hang.
The round trip of a real run through it is in test_tracking_naming."""

from __future__ import annotations

import signal

import pytest

from imgclust.errors import TrackingError
from imgclust.tracking import runs

pytestmark = pytest.mark.slow  # each helper imports MLflow (seconds)

# log_run's keyword arguments: enough for the failures below, which come before any model is logged
ARGUMENTS = dict(
    experiment="unit-exp",
    params={},
    metrics={},
    tags={},
    artifacts=[],
    cluster_classes={},
    summary={},
    model=None,
    model_input_example=[[0.0]],
    image_pipeline=None,
)


def test_an_imgclust_error_in_the_helper_is_raised_in_the_caller(isolated_mlflow, tmp_path):
    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    db.write_text("runs kept as text\n")
    with runs.RunLogger(root=tmp_path, in_process=False) as logger:
        with pytest.raises(TrackingError, match="not an SQLite database") as raised:
            logger.log_run(**ARGUMENTS)
    assert str(db) in str(raised.value)
    assert db.read_text() == "runs kept as text\n"


def test_a_bug_in_the_helper_comes_back_with_its_traceback(isolated_mlflow, tmp_path):
    with runs.RunLogger(root=tmp_path, in_process=False) as logger:
        with pytest.raises(RuntimeError, match="helper process") as raised:
            logger.log_run(**{**ARGUMENTS, "image_pipeline": object()})
    assert "Traceback" in str(raised.value) and "named_steps" in str(raised.value)


def test_a_helper_that_died_is_a_tracking_error_that_says_what_to_do(isolated_mlflow, tmp_path):
    with runs.RunLogger(root=tmp_path, in_process=False) as logger:
        logger._process.kill()
        with pytest.raises(TrackingError, match=r"ended without a result \(exit code -9\).*dvc repro"):
            logger.log_run(**ARGUMENTS)
    assert not (tmp_path / "mlruns").exists()


def test_a_helper_sent_nothing_is_ended_at_once_without_writing(isolated_mlflow, tmp_path):
    logger = runs.RunLogger(root=tmp_path, in_process=False)
    logger.close()  # while it still imports MLflow: killed, not waited for
    assert logger._process.exitcode == -signal.SIGKILL
    assert not (tmp_path / "mlruns").exists()
