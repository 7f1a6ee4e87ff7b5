"""Exceptions raised by imgclust's core code. Only the CLI turns them into messages and exit codes."""

import difflib


def did_you_mean(value, choices) -> str:
    """`` Did you mean 'x'?`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


class ImgclustError(Exception):
    """Base class: every expected failure carries a message that names the file and the fix."""


class SourceError(ImgclustError):
    """The dataset source folder is missing or not laid out as class subfolders."""


class EmptyClassError(ImgclustError):
    """A class folder holds no image."""


class CorruptImageError(ImgclustError):
    """One or more images cannot be decoded."""

    def __init__(self, message: str, paths: list[str] | None = None):
        super().__init__(message)
        self.paths = paths or []


class OutputCollisionError(ImgclustError):
    """Two inputs would be written to the same output file."""


class ParamError(ImgclustError):
    """A parameter value is invalid for the data at hand."""


class InputDataError(ImgclustError):
    """A stage's input (manifest, feature file, model) is missing or inconsistent."""


class WeightsUnavailableError(ImgclustError):
    """Pretrained weights could not be loaded (typically: offline and not cached)."""


class ReproductionError(ImgclustError):
    """A run cannot be re-run: no commit recorded, commit not in the repository, or a step failed."""


class ReproductionMismatchError(ImgclustError):
    """The re-run finished but its metrics or data hashes differ from the logged run's."""


class ChecksumError(SourceError):
    """An archive's sha256 differs from data.sha256."""


class UnsafeArchiveError(SourceError):
    """An archive member would be written outside the extraction folder, or is not a plain file."""


class TrackingError(ImgclustError):
    """The MLflow tracking store or registry refused or could not be reached."""


class OutputWriteError(ImgclustError):
    """An output file could not be written: the disk (or quota) is full, or the write failed."""


class RayEngineError(ImgclustError):
    """The Ray engine could not reach its cluster, or the Ray run failed (after Ray's own retries)."""
