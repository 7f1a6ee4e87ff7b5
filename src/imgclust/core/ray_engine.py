"""Feature extraction on a Ray cluster: Ray Data ``map_batches`` over a pool of actors, each of
which builds the feature extractor once (docs/ray.md).

The images reach the actors without a shared disk: local files are read by Ray tasks pinned to the
driver's node (the machine that has them) and travel as encoded bytes, block by block, through
Ray's object store; ``s3://`` objects are read by the workers themselves. The actor decodes the
bytes with the project's own decoder (``images.open_image``) and runs the very extractor that the
local engine runs, so both engines give the same features. Results come back in input order
(``preserve_order``), one block at a time, so the driver holds one block, never the whole matrix.

Ray is an optional extra (``imgclust[ray]``); it is imported inside functions only.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclust import errors
from imgclust.errors import ImgclustError, InputDataError, ParamError, RayEngineError

ENGINES = ("local", "ray")
S3_PREFIX = "s3://"
# object store of a Ray started here (no RAY_ADDRESS): blocks of encoded images and feature rows
# stream through it, so it need not hold the dataset; Ray spills to disk beyond it
LOCAL_OBJECT_STORE_BYTES = 512 * 2**20
# environment variables the workers need as the driver has them (Keras finds its weights there)
FORWARDED_ENV = ("KERAS_HOME", "TF_CPP_MIN_LOG_LEVEL")
READ_TASKS = 2  # read tasks running at once


@dataclass(frozen=True)
class RaySettings:
    """featurize.ray.*: the actor pool and its fault tolerance."""

    num_actors: int = 2
    num_cpus: float = 1.0  # per actor
    num_gpus: float = 0.0  # per actor
    batch_size: int = 32  # images per actor call
    max_retries: int = 3  # restarts of a dead actor, and retries of its lost calls and of read tasks


def import_ray():
    """The ``ray`` module, with Ray Data; ParamError with the fix when the extra is not installed."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ParamError(
            f"the ray engine needs Ray, which is not installed ({exc}). Install the optional extra "
            "(`scripts/setup --extra ray`, or `pip install 'imgclust[ray]'`), or set featurize.engine: local."
        ) from None
    return ray


def connect() -> bool:
    """Connect to the cluster at RAY_ADDRESS, or start a local Ray when it is not set. Return True
    when this call connected (the caller then disconnects), False when Ray was already initialized."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS") or None
    options = dict(logging_level=logging.WARNING, runtime_env={"env_vars": _forwarded_env()})
    try:
        if address:
            ray.init(address=address, **options)
        else:
            # "local": a new Ray, never the last one `ray start` left on this machine (which
            # ray.init() would join): without RAY_ADDRESS the engine runs here, alone
            ray.init("local", object_store_memory=LOCAL_OBJECT_STORE_BYTES, include_dashboard=False, **options)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        where = f"the Ray cluster at RAY_ADDRESS={address!r}" if address else "a local Ray"
        raise RayEngineError(
            f"cannot start or reach {where} ({type(exc).__name__}: {str(exc).strip()[:300]}). Start the "
            "cluster (`ray start --head` on its head node) and set RAY_ADDRESS to its address, or unset "
            "RAY_ADDRESS to start a local Ray."
        ) from exc
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-run INFO lines, on the stage's output
    return True


def _forwarded_env() -> dict[str, str]:
    return {"TF_CPP_MIN_LOG_LEVEL": "2"} | {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}


def _actor_env(settings: RaySettings) -> dict[str, str]:
    """An actor's environment: TensorFlow's and BLAS's thread pools sized to the actor's CPUs (by
    default each takes every core of the node, and actors sharing a node would oversubscribe it)."""
    threads = str(max(1, round(settings.num_cpus)))
    return _forwarded_env() | {"TF_NUM_INTRAOP_THREADS": threads, "OMP_NUM_THREADS": threads}


def ready(obj):
    """An extractor factory for an extractor that is already set up (pickled to each actor)."""
    return obj


def _read_block(batch: dict, read: Callable[[str], bytes] | None = None) -> dict:
    """Encoded bytes of the block's images (a Ray task): local files (or, through ``read``, items of
    a pack) on the driver's node, or s3:// objects from wherever the task runs. A file that cannot
    be read becomes an error, not a failure."""
    paths = [str(p) for p in batch["path"]]
    data, error_type, error = [], [], []
    for path in paths:
        try:
            data.append((read or _read_bytes)(path))
            error_type.append("")
            error.append("")
        except OSError as exc:
            data.append(b"")
            error_type.append("InputDataError")
            error.append(f"{path}: cannot be read ({exc.strerror or exc})")
        except InputDataError as exc:  # a damaged pack
            data.append(b"")
            error_type.append("InputDataError")
            error.append(str(exc))
    return {
        "idx": batch["idx"],
        "path": np.asarray(paths, dtype=object),
        "data": np.asarray(data, dtype=object),
        "error_type": np.asarray(error_type, dtype=object),
        "error": np.asarray(error, dtype=object),
    }


def _read_bytes(path: str) -> bytes:
    if path.startswith(S3_PREFIX):
        fs, key = _s3(path)
        with fs.open_input_stream(key) as stream:
            return stream.readall()
    return Path(path).read_bytes()


@functools.lru_cache(maxsize=8)
def _s3_filesystem(bucket: str):
    from pyarrow import fs

    return fs.FileSystem.from_uri(f"{S3_PREFIX}{bucket}")[0]


def _s3(uri: str):
    """(pyarrow S3 file system, bucket/key) of ``uri``; credentials, region and endpoint (e.g.
    AWS_ENDPOINT_URL) come from the usual AWS environment variables and files."""
    bucket = uri[len(S3_PREFIX) :].split("/", 1)[0]
    return _s3_filesystem(bucket), uri[len(S3_PREFIX) :]


def list_s3_images(uri: str, is_image: Callable[[str], bool]) -> list[str]:
    """The ``s3://`` URIs under the prefix ``uri`` (or ``uri`` itself, an object) that ``is_image``
    accepts, sorted; InputDataError when the prefix cannot be listed."""
    from pyarrow import fs

    filesystem, key = _s3(uri)
    try:
        info = filesystem.get_file_info(key)
        if info.type == fs.FileType.File:
            return [uri]
        found = filesystem.get_file_info(fs.FileSelector(key.rstrip("/"), recursive=True, allow_not_found=True))
    except OSError as exc:
        raise errors.InputDataError(f"{uri}: cannot be listed ({exc}); check the URI and the AWS credentials.") from exc
    return sorted(f"{S3_PREFIX}{f.path}" for f in found if f.type == fs.FileType.File and is_image(f.path))


class _ExtractFeatures:
    """One actor of the pool: builds the extractor once, then turns blocks of encoded images into
    feature rows. An image that cannot be decoded is returned as an error row (its features zero)."""

    def __init__(self, extractor_factory: Callable, decode: Callable[[str, bytes], np.ndarray]):
        self.extractor = extractor_factory()
        self.decode = decode

    def __call__(self, batch: dict) -> dict:
        error_type, error = list(batch["error_type"]), list(batch["error"])
        arrays, good = [], []
        for i, (path, data) in enumerate(zip(batch["path"], batch["data"])):
            if error[i]:
                continue
            try:
                arrays.append(self.decode(str(path), data))
                good.append(i)
            except ImgclustError as exc:
                error_type[i], error[i] = type(exc).__name__, str(exc)
        rows = self.extractor.transform(arrays) if arrays else np.zeros((0, 0), dtype=np.float32)
        features = np.zeros((len(error), rows.shape[1]), dtype=rows.dtype)
        features[good] = rows
        return {
            "idx": batch["idx"],
            "features": features,
            "error_type": np.asarray(error_type, dtype=object),
            "error": np.asarray(error, dtype=object),
        }


def _on_this_node(ray) -> dict:
    """map_batches options that run its tasks on this (the driver's) node: where local files are."""
    return {"label_selector": {"ray.io/node-id": ray.get_runtime_context().get_node_id()}}


def extract(
    items: Sequence[str],
    extractor_factory: Callable,
    decode: Callable[[str, bytes], np.ndarray],
    settings: RaySettings,
    read: Callable[[str], bytes] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]]:
    """Feature rows of ``items`` (file paths, or s3:// URIs) computed on Ray, in input order, one
    block at a time: ``(idx, features, errors)`` with ``errors[i] = (exception name, message)`` or
    ``("", "")``. Each actor calls ``extractor_factory()`` once (it returns an extractor ready to
    ``transform`` a list of arrays) and ``decode(path, bytes)`` per image (picklable callables);
    ``read(item)``, if given, reads a local item's bytes (e.g. ``packs.read_named``).

    The caller must consume the iterator to the end (or close it): it holds the Ray connection.
    """
    ray = import_ray()
    items = [str(p) for p in items]
    if not items:
        return
    started = connect()
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # rows come back in input order
        context.enable_progress_bars = False  # the caller shows its own
        context.print_on_execution_start = False
        batch = settings.batch_size
        # Ray's advice for inputs of fewer blocks than actors; a small input is simply small
        warnings.filterwarnings("ignore", message=r".*operator only received \d+ input", category=UserWarning)
        # one block per actor call: the driver's memory is bounded by a few blocks in flight
        source = ray.data.from_items(
            [{"idx": i, "path": p} for i, p in enumerate(items)], override_num_blocks=-(-len(items) // batch)
        )
        remote = any(p.startswith(S3_PREFIX) for p in items)
        # reading is I/O: no CPU reserved (the actors hold them), but a bounded number of tasks at a
        # time, each a worker process, a block ahead of the actors
        read = source.map_batches(
            _read_block,
            fn_kwargs={"read": read},
            batch_format="numpy",
            batch_size=None,
            num_cpus=0,
            compute=ray.data.TaskPoolStrategy(size=READ_TASKS),
            **({} if remote else _on_this_node(ray)),
        )
        with warnings.catch_warnings():
            # Ray 2.60 still takes the actors' max_restarts/max_task_retries (its own default
            # restarts them forever: a worker that dies on every call would never fail the run)
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated", category=DeprecationWarning)
            dataset = read.map_batches(
                _ExtractFeatures,
                fn_constructor_kwargs={"extractor_factory": extractor_factory, "decode": decode},
                batch_format="numpy",
                batch_size=batch,
                compute=ray.data.ActorPoolStrategy(size=settings.num_actors),
                num_cpus=settings.num_cpus,
                num_gpus=settings.num_gpus or None,
                runtime_env={"env_vars": _actor_env(settings)},
                max_restarts=settings.max_retries,
                max_task_retries=settings.max_retries,
            )
        expected = 0
        try:
            for block in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
                idx = np.asarray(block["idx"], dtype=np.int64)
                if not np.array_equal(idx, np.arange(expected, expected + len(idx))):
                    raise RayEngineError(f"Ray returned rows out of order (expected row {expected}, got {idx[:3]}...).")
                expected += len(idx)
                features = np.asarray(block["features"])
                yield idx, features, list(zip(block["error_type"], block["error"]))
        except ray.exceptions.RayError as exc:
            raise RayEngineError(
                f"the Ray run failed ({type(exc).__name__}: {str(exc).strip()[-600:]}); nothing was written. "
                "A worker that died was restarted up to featurize.ray.max_retries times: raise it, give the "
                "actors more memory (fewer actors per node, smaller featurize.ray.batch_size), or check the "
                "worker logs (/tmp/ray/session_latest/logs on each node)."
            ) from exc
        if expected != len(items):
            raise RayEngineError(f"Ray returned {expected} of {len(items)} rows; nothing was written.")
    finally:
        if started:
            ray.shutdown()


def raise_error(error_type: str, message: str):
    """Re-raise an error an actor reported for one image, as the imgclust exception it was."""
    cls = getattr(errors, error_type, None)
    if not (isinstance(cls, type) and issubclass(cls, ImgclustError)):
        cls = errors.InputDataError
    raise cls(message)


def predict(pipeline, items: Sequence[str], settings: RaySettings) -> Iterator[tuple[str, int | None, str | None]]:
    """``(item, cluster, error)`` per item, in order, for an image-level ``pipeline`` (ImageLoader ->
    extractor -> the fitted clustering steps, ``extractors.image_pipeline``): the actors decode the
    images as its loader does and run its extractor; the clustering steps run here, block by block."""
    loader, extractor, clustering = pipeline.named_steps["load"], pipeline.named_steps["features"], pipeline[2:]
    items = [str(p) for p in items]
    for idx, features, errors_ in extract(items, functools.partial(ready, extractor), loader.decode, settings):
        good = [i for i, (_, message) in enumerate(errors_) if not message]
        clusters = iter(clustering.predict(features[good]) if good else ())
        for i, (_, message) in zip(idx, errors_):
            yield (items[i], None, message) if message else (items[i], int(next(clusters)), None)
