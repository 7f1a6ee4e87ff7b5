"""Packed datasets (imgclust.core.packs): tar shards + index, deterministic, content-defined shard
boundaries, and an index that is checked before any byte of it is trusted."""

from __future__ import annotations

import csv
import hashlib
import os
import tarfile
from pathlib import Path

import pytest

from imgclust.core import packs
from imgclust.core.packs import (
    INDEX,
    INDEX_FIELDS,
    SHARD_NAME,
    Pack,
    PackWriter,
    check_item_path,
    export,
    open_pack,
    read_named,
    starts_shard,
    write_pack,
)
from imgclust.errors import InputDataError, OutputCollisionError
from support.project import tree_hashes


def _data(path: str, size: int | None = None) -> bytes:
    """Bytes that differ per path and in length (not a multiple of the tar block)."""
    seed = hashlib.sha256(path.encode()).digest()
    return (seed * 40)[: size if size is not None else 1 + seed[0] % 97]


def _items(n: int, classes: int = 3) -> list[tuple[str, bytes]]:
    return sorted((path, _data(path)) for path in (f"c{i % classes}/img {i:05d}.png" for i in range(n)))


def _write(folder: Path, items) -> Path:
    folder.mkdir(parents=True)
    write_pack(folder, items)
    return folder


def _shards(folder: Path) -> dict[str, str]:
    """Shard file name -> sha256 of its bytes."""
    return {name: digest for name, digest in tree_hashes(folder).items() if name != INDEX}


def _index_rows(folder: Path) -> list[dict]:
    with open(folder / INDEX, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------------------------- round trip


def test_round_trip_of_items_nested_paths_and_odd_names(tmp_path):
    items = sorted(
        [
            ("benign/benign (1).png", _data("a", 0)),  # an empty item
            ("benign/sub/deeper/x.jpg", _data("b", 512)),  # exactly one tar block
            ("malignant/é ü #1.png", _data("c", 513)),
            ("$\\bad$ lesion/y.png", _data("d", 2000)),  # a backslash is a character of a POSIX name
            ("normal/" + "n" * 200 + ".png", _data("e")),  # longer than ustar's 100 bytes: a PAX header
        ]
    )
    rows = _write(tmp_path / "pack", items)
    pack = Pack(tmp_path / "pack")
    assert len(pack) == len(items) and pack.paths() == [path for path, _ in items]
    assert dict(pack.iter_items()) == dict(items)
    for path, data in items:
        assert path in pack and pack.read(path) == data
        assert pack.sha256(path) == hashlib.sha256(data).hexdigest() and pack.size(path) == len(data)
        assert pack.name(path) == tmp_path / "pack" / path
    assert "benign/absent.png" not in pack
    assert [row["path"] for row in _index_rows(rows)] == [path for path, _ in items]

    out = tmp_path / "exported"
    assert export(pack, out) == len(items)
    assert tree_hashes(out) == {path: hashlib.sha256(data).hexdigest() for path, data in items}


def test_an_empty_pack_is_a_pack_of_nothing(tmp_path):
    _write(tmp_path / "pack", [])
    assert len(Pack(tmp_path / "pack")) == 0 and os.listdir(tmp_path / "pack") == [INDEX]


def test_the_same_items_give_byte_identical_shards_and_index(tmp_path):
    items = _items(600)
    first, second = _write(tmp_path / "a", items), _write(tmp_path / "b", iter(items))
    assert tree_hashes(first) == tree_hashes(second)
    assert len(_shards(first)) >= 2, "the items must fill several shards"
    assert all(SHARD_NAME.fullmatch(name) for name in _shards(first))


def test_every_shard_is_a_plain_tar_of_its_items(tmp_path):
    items = dict(_items(600))
    folder = _write(tmp_path / "pack", sorted(items.items()))
    rows = _index_rows(folder)
    assert list(rows[0]) == list(INDEX_FIELDS)
    seen = []
    for shard in sorted(_shards(folder)):
        listed = [row for row in rows if row["shard"] == shard]
        with tarfile.open(folder / shard) as tar:
            members = tar.getmembers()
            assert [m.name for m in members] == [row["path"] for row in listed]
            for member, row in zip(members, listed, strict=True):
                assert member.isfile() and (member.mtime, member.mode, member.uid, member.gid) == (0, 0o644, 0, 0)
                assert tar.extractfile(member).read() == items[row["path"]]
                assert (member.offset_data, member.size) == (int(row["offset"]), int(row["size"]))
        seen += [row["path"] for row in listed]
    assert sorted(seen) == sorted(items), "every item is in exactly one shard"
    # the whole shard extracts with the standard library's safe filter, to the same bytes
    for shard in _shards(folder):
        with tarfile.open(folder / shard) as tar:
            tar.extractall(tmp_path / "x", filter="data")
    assert tree_hashes(tmp_path / "x") == {path: hashlib.sha256(data).hexdigest() for path, data in items.items()}


# --------------------------------------------------------------------- content-defined boundaries


def _changed(before: dict[str, str], after: dict[str, str]) -> tuple[set, set, set]:
    """(shard files written anew, shard files gone, shard files kept byte for byte)."""
    old, new = set(before.items()), set(after.items())
    return new - old, old - new, new & old


N_ITEMS = 2000


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    items = _items(N_ITEMS)
    folder = _write(tmp_path_factory.mktemp("cdc") / "base", items)
    return items, _shards(folder), _index_rows(folder)


def _new_path(boundary: bool) -> str:
    """A path among the base's (class c1) that does or does not start a shard."""
    return next(p for p in (f"c1/img {i:05d}b.png" for i in range(500, 10_000)) if starts_shard(p) == boundary)


@pytest.mark.parametrize("boundary", [False, True], ids=["inside-a-shard", "starting-a-shard"])
def test_adding_one_item_rewrites_at_most_two_shards(tmp_path, base, boundary):
    items, before, _ = base
    assert len(before) >= 4, "the test needs several shards"
    path = _new_path(boundary)
    after = _shards(_write(tmp_path / "pack", sorted([*items, (path, _data(path))])))
    written, gone, kept = _changed(before, after)
    assert 1 <= len(written) <= 2 and len(gone) == 1, (written, gone)
    assert len(kept) == len(before) - 1
    assert len(written) == (2 if boundary else 1)  # a boundary item splits its shard in two


@pytest.mark.parametrize("first", [False, True], ids=["inside-a-shard", "first-of-a-shard"])
def test_removing_one_item_rewrites_at_most_two_shards(tmp_path, base, first):
    items, before, rows = base
    starts = {row["path"] for row, prev in zip(rows[1:], rows) if row["shard"] != prev["shard"]}
    victim = next(row["path"] for row in rows[len(rows) // 3 :] if (row["path"] in starts) == first)
    after = _shards(_write(tmp_path / "pack", [item for item in items if item[0] != victim]))
    written, gone, kept = _changed(before, after)
    assert len(written) == 1 and 1 <= len(gone) <= 2, (written, gone)
    assert len(gone) == (2 if first else 1)  # without its first item, a shard joins the one before
    assert len(kept) == len(before) - len(gone)


def test_changing_one_item_rewrites_only_its_shard(tmp_path, base):
    items, before, rows = base
    victim = rows[N_ITEMS // 2]["path"]
    after = _shards(_write(tmp_path / "pack", [(p, b"changed" if p == victim else d) for p, d in items]))
    written, gone, kept = _changed(before, after)
    assert len(written) == len(gone) == 1 and len(kept) == len(before) - 1
    assert gone == {(rows[N_ITEMS // 2]["shard"], before[rows[N_ITEMS // 2]["shard"]])}


# ------------------------------------------------------------------------------ writer refusals


def test_the_writer_refuses_unsorted_and_duplicate_items(tmp_path):
    (tmp_path / "a").mkdir()
    writer = PackWriter(tmp_path / "a")
    writer.add("b/2.png", b"x")
    with pytest.raises(ValueError, match="sorted by path"):
        writer.add("b/1.png", b"y")
    with pytest.raises(OutputCollisionError) as info:
        writer.add("b/2.png", b"z")
    assert "'b/2.png'" in str(info.value) and "rename one" in str(info.value)
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError):
        write_pack(tmp_path / "b", [("a/2.png", b""), ("a/10.png", b"")])  # sorted as strings, not numbers


@pytest.mark.parametrize(
    "path", ["../x.png", "a/../../x.png", "/etc/x.png", "x.png", "a//x.png", "a/./x.png", "a/x.png/", "\\a\\x.png"]
)
def test_the_writer_refuses_a_path_that_could_leave_the_pack(tmp_path, path):
    with pytest.raises(InputDataError) as info:
        write_pack(tmp_path, [(path, b"x")])
    assert repr(path) in str(info.value) and "class/name" in str(info.value)


@pytest.mark.parametrize("path", ["a\\..\\..\\x.png", "a/..\\x.png", "a/b\\..\\..\\..\\x.png"])
def test_a_backslash_path_that_would_climb_on_windows_is_refused(path):
    with pytest.raises(InputDataError, match="class/name"):
        check_item_path(path, "index.csv")
    assert check_item_path("$\\bad$ lesion/x\\y.png") == "$\\bad$ lesion/x\\y.png"


# ------------------------------------------------------------------------------ hostile indexes


@pytest.fixture
def pack(tmp_path) -> Path:
    return _write(tmp_path / "resized", _items(40))


def _rewrite_index(folder: Path, edit) -> Path:
    rows = _index_rows(folder)
    edit(rows)
    with open(folder / INDEX, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else INDEX_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return folder / INDEX


def _set(field: str, value: str, at: int = 3):
    def edit(rows):
        rows[at][field] = value

    return edit


def _offset_past_the_end(folder: Path):
    def edit(rows):
        size = (folder / rows[0]["shard"]).stat().st_size
        rows[0]["offset"] = str(size - int(rows[0]["size"]) + 1)

    return edit


HOSTILE = {
    "dotdot": (_set("path", "c0/../../evil.png"), "is not a relative path"),
    "absolute": (_set("path", "/etc/passwd"), "is not a relative path"),
    "backslash-dotdot": (_set("path", "c0\\..\\..\\evil.png"), "is not a relative path"),
    "no-class": (_set("path", "evil.png"), "is not a relative path"),
    "shard-outside": (_set("shard", "../part-0000000000000000.tar"), "is not a shard name"),
    "shard-index": (_set("shard", INDEX), "is not a shard name"),
    "shard-absent": (_set("shard", "part-0123456789abcdef.tar"), "missing (listed in"),
    "negative-offset": (_set("offset", "-1"), "lies outside"),
    "huge-size": (_set("size", str(10**12)), "lies outside"),
    "not-a-number": (_set("offset", "12abc"), "bad offset or size"),
    "listed-twice": (lambda rows: rows.append(dict(rows[0])), "is listed twice"),
    "wrong-columns": (lambda rows: [row.pop("sha256") for row in rows], "are not"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_index_is_refused_on_opening_naming_it_and_the_fix(pack, case):
    edit, words = HOSTILE[case]
    index = _rewrite_index(pack, edit)
    with pytest.raises(InputDataError) as info:
        Pack(pack, producer="resize")
    message = str(info.value)
    assert words in message and str(pack) in message, message
    assert str(index) in message or "missing (listed in" in message
    assert "rerun the resize stage (dvc repro resize)" in message


def test_an_offset_past_the_end_of_the_shard_is_refused(pack):
    _rewrite_index(pack, _offset_past_the_end(pack))
    with pytest.raises(InputDataError, match="lies outside") as info:
        Pack(pack)
    assert str(pack / INDEX) in str(info.value) and "dvc repro" in str(info.value)


def test_a_truncated_shard_is_refused_on_opening(pack):
    shard = pack / _index_rows(pack)[-1]["shard"]
    shard.write_bytes(shard.read_bytes()[:-2000])
    with pytest.raises(InputDataError, match="lies outside") as info:
        Pack(pack, producer="ingest")
    assert "dvc repro ingest" in str(info.value)


def test_a_shard_that_is_a_symlink_is_refused(pack, tmp_path):
    name = _index_rows(pack)[0]["shard"]
    (pack / name).rename(tmp_path / name)
    os.symlink(tmp_path / name, pack / name)
    with pytest.raises(InputDataError, match="missing"):
        Pack(pack)


def test_altered_bytes_fail_the_read_naming_the_item_and_the_fix(pack):
    rows = _index_rows(pack)
    victim = rows[5]
    with open(pack / victim["shard"], "r+b") as fh:
        fh.seek(int(victim["offset"]))
        fh.write(b"\xff")
    opened = Pack(pack, producer="augment")  # offsets and sizes are still right: opening succeeds
    assert opened.read(rows[4]["path"]) == dict(_items(40))[rows[4]["path"]]
    with pytest.raises(InputDataError) as info:
        opened.read(victim["path"])
    message = str(info.value)
    assert str(pack / victim["path"]) in message and "do not match the index" in message
    assert "dvc repro augment" in message and "dvc checkout" in message
    with pytest.raises(InputDataError, match="do not match"):
        dict(opened.iter_items())
    with pytest.raises(InputDataError, match="not in the pack"):
        opened.read("c0/absent.png")


def test_a_folder_of_files_or_nothing_is_not_a_pack(tmp_path):
    (tmp_path / "files" / "a").mkdir(parents=True)
    (tmp_path / "files" / "a" / "x.png").write_bytes(b"x")
    with pytest.raises(InputDataError, match="a folder of image files, not a pack") as info:
        Pack(tmp_path / "files", producer="strip_masks")
    assert str(tmp_path / "files") in str(info.value) and "dvc repro strip_masks" in str(info.value)
    with pytest.raises(InputDataError, match="not found"):
        Pack(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / INDEX).write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(InputDataError, match="cannot be read"):
        Pack(tmp_path / "bad")


# ----------------------------------------------------------------------------- export, open_pack


def test_export_refuses_to_overwrite_and_leaves_the_file(pack, tmp_path):
    out = tmp_path / "out"
    first = _index_rows(pack)[0]["path"]
    (out / first).parent.mkdir(parents=True)
    (out / first).write_bytes(b"mine")
    with pytest.raises(OutputCollisionError) as info:
        export(Pack(pack), out)
    assert str(out / first) in str(info.value) and "empty folder" in str(info.value)
    assert (out / first).read_bytes() == b"mine"
    assert export(Pack(pack), tmp_path / "some", paths=[first]) == 1
    assert tree_hashes(tmp_path / "some") == {first: Pack(pack).sha256(first)}


def test_open_pack_reads_a_replaced_pack_afresh(tmp_path):
    folder = _write(tmp_path / "p", [("a/1.png", b"one")])
    assert open_pack(folder) is open_pack(folder)
    assert read_named(str(folder), str(folder / "a" / "1.png")) == b"one"
    os.rename(folder, tmp_path / "old")
    _write(folder, [("a/1.png", b"ONE!"), ("a/2.png", b"two")])
    assert open_pack(folder).paths() == ["a/1.png", "a/2.png"]
    assert read_named(str(folder), str(folder / "a" / "1.png")) == b"ONE!"


def test_shards_hold_about_shard_items_images_each(base):
    items, before, _ = base
    assert N_ITEMS / packs.SHARD_ITEMS / 3 <= len(before) <= N_ITEMS / packs.SHARD_ITEMS * 3
