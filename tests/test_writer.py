import io
import tarfile

import zstandard

from bionas.shards.format import decode_record, encode_record, is_safe_key
from bionas.shards.writer import Sample, write_shard


def _samples(n=3):
    return [
        Sample(
            f"KEY-{i}",
            bytes([i]) * 100,
            encode_record({"processid": f"KEY-{i}", "order": "Diptera"}),
        )
        for i in range(n)
    ]


def test_tar_members_have_fixed_metadata_and_order(tmp_path):
    info = write_shard(tmp_path / "train-000000.tar", _samples())
    with tarfile.open(tmp_path / "train-000000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        "KEY-0.jpg",
        "KEY-0.json",
        "KEY-1.jpg",
        "KEY-1.json",
        "KEY-2.jpg",
        "KEY-2.json",
    ]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
        (0, 0, 0, "", "", 0o644)
    }
    assert (info.samples, info.first_key, info.last_key) == (3, "KEY-0", "KEY-2")


def test_same_samples_give_identical_bytes_and_no_temporary_is_left(tmp_path):
    a = write_shard(tmp_path / "a.tar", _samples())
    b = write_shard(tmp_path / "b.tar", _samples())
    assert a.sha256 == b.sha256
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert not list(tmp_path.glob("*.tmp"))


def test_zstd_shard_round_trips_with_plain_zstandard_and_tarfile(tmp_path):
    path = tmp_path / "train-000000.tar.zst"
    info = write_shard(path, _samples(), compression="zstd")
    raw = zstandard.ZstdDecompressor().decompress(path.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        record = decode_record(tar.extractfile("KEY-1.json").read())
        image = tar.extractfile("KEY-1.jpg").read()
    assert record == {"processid": "KEY-1", "order": "Diptera"}
    assert image == bytes([1]) * 100
    assert info.bytes == path.stat().st_size


def test_keys_with_dots_or_separators_are_unsafe():
    assert is_safe_key("BIOUG12345-A01")
    for bad in ("a.b", "../x", "a/b", "a\\b", "", "x" * 200):
        assert not is_safe_key(bad)
