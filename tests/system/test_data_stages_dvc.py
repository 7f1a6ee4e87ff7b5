"""The data stages under ``dvc repro`` of a real git + DVC project: archive and URL sources, and
the corpus of awkward and broken inputs. (Their pure functions are tested in tests/unit:
test_archives.py and test_bad_inputs.py, whose input builders are repeated here.)"""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import io
import json
import os
import shutil
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from support.project import make_project, sh, tree_hashes

SIZE = 32  # resize target of the corpus project: small keeps it fast, square allows every op


# ------------------------------------------------------------------------- archives (test_archives)


def _dataset(root: Path) -> Path:
    """Two classes of small PNGs (with a mask), the layout an archive must unpack to."""
    rng = np.random.default_rng(0)
    for cls in ("benign", "malignant"):
        for i in range(3):
            path = root / cls / f"{cls} ({i}).png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (12, 16), dtype=np.uint8)).save(path)
        Image.new("1", (16, 12)).save(root / cls / f"{cls} (0)_mask.png")
    return root


def _zip(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, prefix + path.relative_to(folder).as_posix())
    return archive


def _tgz(folder: Path, archive: Path, prefix: str = "") -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, prefix + path.relative_to(folder).as_posix(), recursive=False)
    return archive


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _append_tar_member(archive: Path, info: tarfile.TarInfo, data: bytes = b"") -> None:
    """Rewrite a .tgz with one more member (gzip streams cannot be appended to in place)."""
    buffer = io.BytesIO()
    with tarfile.open(archive, "r:gz") as old, tarfile.open(fileobj=buffer, mode="w:gz") as new:
        for member in old.getmembers():
            new.addfile(member, old.extractfile(member) if member.isfile() else None)
        info.size = len(data) if info.isfile() else 0
        new.addfile(info, io.BytesIO(data) if info.isfile() else None)
    archive.write_bytes(buffer.getvalue())


def _tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving ``tmp_path / 'served'``; yields its base URL."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002  (the base class's signature)
        pass


# ----------------------------------------------------------------------- the corpus (test_bad_inputs)


def _noise(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def _truncated(path: Path, fmt: str, seed: int) -> None:
    import io

    buffer = io.BytesIO()
    Image.fromarray(_noise((48, 48, 3), seed)).save(buffer, format=fmt)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def _exif_rotated(path: Path) -> None:
    """Stored 40 wide x 20 high, left half black, right half white, EXIF orientation 6 (display
    rotated 90 degrees clockwise): shown 20 x 40, top half black, bottom half white."""
    array = np.zeros((20, 40), np.uint8)
    array[:, 20:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(array).save(path, format="JPEG", quality=95, exif=exif.tobytes())


def _gray16(path: Path) -> None:
    """A horizontal 16-bit gradient 0..65535: 8-bit output must span 0..255, not saturate."""
    Image.fromarray(np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (16, 1))).save(path)


def _palette_transparent(path: Path) -> None:
    """Palette image: left half index 0 (white, transparent), right half index 1 (white, opaque)."""
    image = Image.new("P", (20, 20), 0)
    image.putpalette([255, 255, 255] * 2 + [0] * 762)
    image.paste(1, (10, 0, 20, 20))
    image.save(path, transparency=0)


def _bomb(path: Path) -> None:
    """A real PNG above Pillow's decompression-bomb limit (2 x 89.5 Mpx): 20000 x 20000 all-black
    1-bit pixels compress to about 50 kB."""
    Image.new("1", (20000, 20000)).save(path, format="PNG")


# relative path -> (fate, detail): image (processed), mask (raw only), corrupt (reason), ignored
def build_corpus(root: Path, outside: Path, dangling_link: bool = True) -> dict[str, tuple[str, str]]:
    expected: dict[str, tuple[str, str]] = {}
    outside.mkdir(parents=True, exist_ok=True)
    _png(outside / "secret.png", np.full((9, 9), 77, np.uint8))
    _png(outside / "folder" / "also secret.png", np.full((9, 9), 78, np.uint8))

    def image(rel: str, array: np.ndarray | None = None, seed: int = 0, writer=None, detail: str = "") -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if writer is not None:
            writer(path)
        else:
            _png(path, array if array is not None else _noise((24, 30, 3), seed))
        expected[rel] = ("image", detail)

    def mask(rel: str) -> None:
        # a lesion-like blob at a per-mask place: masks differ, as real ones do
        blob = np.zeros((24, 30), np.uint8)
        offset = 2 * sum(kind == "mask" for kind, _ in expected.values())
        blob[offset:offset + 8, offset:offset + 10] = 255
        _png(root / rel, blob)
        expected[rel] = ("mask", "")

    def corrupt(rel: str, writer, reason: str) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        writer(path)
        expected[rel] = ("corrupt", reason)

    def ignored(rel: str, make) -> None:
        make(root / rel)
        expected[rel] = ("ignored", "")

    # benign: awkward names, modes and layout
    image("benign/benign (1).png", seed=1)
    mask("benign/benign (1)_mask.png")
    image("benign/with space (2).png", seed=2)
    image("benign/ünïcødé 超声 (3).png", seed=3)
    image("benign/-leading-dash.png", seed=4)
    image("benign/jpeg named.png", writer=lambda p: Image.fromarray(_noise((24, 30, 3), 5)).save(p, format="JPEG"),
          detail="wrong extension")
    image("benign/gray16.png", writer=_gray16, detail="16-bit")
    image("benign/palette transparent.png", writer=_palette_transparent, detail="palette")
    image("benign/nested/deeper/inner (4).png", seed=6)
    duplicate = _noise((24, 30, 3), 99)
    image("benign/dup.png", duplicate)
    mask("benign/lonely (9)_mask.png")  # a mask without its image
    corrupt("benign/zero.png", lambda p: p.write_bytes(b""), "cannot identify image file")
    corrupt("benign/truncated.png", lambda p: _truncated(p, "PNG", 7), "truncated")
    ignored("benign/outside link.png", lambda p: os.symlink(outside / "secret.png", p))
    ignored("benign/outside folder", lambda p: os.symlink(outside / "folder", p, target_is_directory=True))
    ignored("benign/notes.txt", lambda p: p.write_text("scanner notes\n"))
    if dangling_link:
        ignored("benign/dangling.png", lambda p: os.symlink(outside / "gone.png", p))
    # malignant: modes and shapes
    image("malignant/cmyk.jpg", writer=lambda p: Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(p, quality=95),
          detail="cmyk red")
    image("malignant/exif rotated.jpg", writer=_exif_rotated, detail="exif 6")
    image("malignant/one pixel.png", np.full((1, 1), 123, np.uint8), detail="1x1")
    image("malignant/elongated.png", _noise((3, 2000), 8), detail="2000x3")
    image("malignant/dup copy.png", duplicate)
    image("malignant/no mask (5).png", seed=9)  # an image without a mask
    corrupt("malignant/truncated.jpg", lambda p: _truncated(p, "JPEG", 10), "truncated")
    corrupt("malignant/text.png", lambda p: p.write_text("this is not a PNG\n"), "cannot identify image file")
    corrupt("malignant/bomb.png", _bomb, "decompression bomb")
    # normal: plain images, some with masks
    for i in range(7):
        image(f"normal/normal ({i}).png", seed=20 + i)
        if i % 2:
            mask(f"normal/normal ({i})_mask.png")
    return expected


def by_fate(expected: dict, fate: str) -> set[str]:
    return {rel for rel, (kind, _) in expected.items() if kind == fate}


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------------- dvc repro


def test_dvc_repro_from_a_local_archive(tmp_path):
    dataset = _dataset(tmp_path / "dataset")
    archive = _tgz(dataset, tmp_path / "dataset.tgz")
    root = make_project(tmp_path / "project", data__source=str(archive))
    sh("dvc", "repro", "strip_masks", cwd=root)
    assert sorted(p.name for p in (root / "data" / "stripped" / "benign").iterdir()) == \
        [f"benign ({i}).png" for i in range(3)]
    assert "up to date" in sh("dvc", "status", "ingest", cwd=root).stdout
    shutil.copy(archive, tmp_path / "old.tgz")
    _append_tar_member(archive, _tar_member("benign/benign (9).png"), (dataset / "benign" / "benign (1).png").read_bytes())
    assert "modified" in sh("dvc", "status", "ingest", cwd=root).stdout


def test_dvc_repro_from_a_url_with_sha256(tmp_path, http_server):
    served, base = http_server
    archive = _zip(_dataset(tmp_path / "dataset"), served / "dataset.zip")
    root = make_project(tmp_path / "project", data__source=f"{base}/dataset.zip", data__sha256="0" * 64)
    failed = sh("dvc", "repro", "ingest", cwd=root, check=False)
    assert failed.returncode != 0 and _sha256(archive) in failed.stdout + failed.stderr
    assert not (root / "data" / "raw").exists()
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["sha256"] = _sha256(archive)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("dvc", "repro", "strip_masks", cwd=root)
    assert len(list((root / "data" / "stripped").rglob("*.png"))) == 6
    lock = (root / "dvc.lock").read_text()
    assert f"{base}/dataset.zip" in lock


def test_dvc_repro_on_the_corpus(tmp_path):
    # DVC hashes an external dependency folder itself: it fails on a dangling link, so none here
    source = tmp_path / "corpus"
    expected = build_corpus(source, tmp_path / "outside", dangling_link=False)
    before = tree_hashes(source)
    root = make_project(tmp_path / "project", data__source=str(source), resize__width=SIZE, resize__height=SIZE)

    failed = sh("dvc", "repro", "augment", cwd=root, check=False)
    assert failed.returncode != 0
    output = failed.stdout + failed.stderr
    for rel in by_fate(expected, "corrupt"):
        assert str(source / rel) in output, rel
    assert "decompression bomb" in output and "skip_corrupt" in output
    assert not (root / "data" / "raw").exists()

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["ingest"]["skip_corrupt"] = True
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("dvc", "repro", "augment", cwd=root)
    report = json.loads((root / "reports" / "ingest.json").read_text())
    assert {row["path"] for row in report["corrupt_skipped"]} == by_fate(expected, "corrupt")
    assert set(report["ignored"]) == by_fate(expected, "ignored")
    assert report["n_duplicates_across_classes"] == 1
    resized = root / "data" / "resized"
    assert {p.relative_to(resized).as_posix() for p in resized.rglob("*.png")} == \
        {Path(rel).with_suffix(".png").as_posix() for rel in by_fate(expected, "image")}
    assert {Image.open(p).size for p in resized.rglob("*.png")} == {(SIZE, SIZE)}
    augmented = _read_csv(root / "data" / "manifests" / "augmented.csv")
    assert all(row["class"] == row["source"].split("/", 1)[0] for row in augmented)
    assert "up to date" in sh("dvc", "status", "augment", cwd=root).stdout
    assert tree_hashes(source) == before
