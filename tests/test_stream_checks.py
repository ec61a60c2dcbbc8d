"""Training never loses samples silently: shards are checked against the manifest while
they stream, members are capped, every decode error is a counted sample, records are
strict JSON, and `inspect --verify` lists what the manifest does not."""

from __future__ import annotations

import io
import json
import math
import random
import tarfile
from dataclasses import replace

import polars as pl
import pytest
import zstandard
from click.testing import CliRunner
from datasets import make_tiny_dataset, tiny_jpeg, tiny_record  # tests/datasets.py

from bionas.cli import main
from bionas.manifests.manifest import load_manifest
from bionas.manifests.verify import verify_dataset
from bionas.shards.format import decode_record, encode_record
from bionas.shards.reader import CorruptDataError, ReadStats, Slot, read_samples
from bionas.shards.writer import Sample, write_shard
from bionas.trainer.data import BatchStream, StreamPosition, StreamSpec, check_shards_exist
from bionas.trainer.encoding import load_encoding
from bionas.trainer.split_predictions import SplitStream

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture
def dataset(tmp_path):
    return make_tiny_dataset(tmp_path / "ds", n=40, shards_per_split=4)  # 10 samples a shard


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def tar_of(path):
    data = path.read_bytes()
    return zstandard.ZstdDecompressor().decompress(data) if path.suffix == ".zst" else data


def flip_header_bit(path, member: int) -> None:
    """Flip one bit in the name field of the tar header of `member` (0 = the first)."""
    data = bytearray(tar_of(path))
    offset = 0
    for _ in range(member):  # walk the headers: 512-byte header + data padded to 512
        size = int(data[offset + 124 : offset + 136].rstrip(b"\0 ") or b"0", 8)
        offset += 512 + -(-size // 512) * 512
    data[offset + 1] ^= 0x01
    packed = bytes(data)
    if path.suffix == ".zst":
        packed = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(packed)
    path.write_bytes(packed)


def keys_and_stats(shards, **kwargs):
    stats = ReadStats(**kwargs)
    return [s.key for s in read_samples(shards, stats=stats, shuffle_shards=False)], stats


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_a_bit_flip_in_a_tar_header_after_the_first_member_is_a_counted_broken_shard(
    tmp_path, compression
):
    root = make_tiny_dataset(tmp_path / "ds", n=40, shards_per_split=4, compression=compression)
    manifest = load_manifest(root)
    shard = manifest.shard_paths("train")[1]
    flip_header_bit(shard, member=6)  # sample 3's image: tarfile takes it for the end
    keys, unchecked = keys_and_stats(manifest.shard_paths("train"))
    assert (len(keys), unchecked.broken_shards) == (33, 0)  # what a bare tar stream sees
    refs = check_shards_exist(manifest, "train")
    keys, stats = keys_and_stats(refs)
    assert len(keys) == 33  # the 3 samples it gave stay given
    assert stats.broken_shards == 1
    assert stats.lost_samples == 7
    with pytest.raises(CorruptDataError, match=shard.name):
        keys_and_stats(refs, strict=True)


def test_the_sample_count_alone_catches_a_tar_that_ends_early(dataset):
    manifest = load_manifest(dataset)
    flip_header_bit(manifest.shard_paths("train")[0], member=2)
    counts_only = [
        replace(r, size=None, sha256=None) for r in check_shards_exist(manifest, "train")
    ]
    keys, stats = keys_and_stats(counts_only)
    assert len(keys) == 31
    assert stats.broken_shards == 1
    assert stats.lost_samples == 9


def test_bytes_after_the_end_of_the_archive_make_the_shard_broken(dataset, caplog):
    manifest = load_manifest(dataset)
    shard = manifest.shard_paths("train")[2]
    shard.write_bytes(shard.read_bytes() + b"appended")
    keys, stats = keys_and_stats(check_shards_exist(manifest, "train"))
    assert len(keys) == 40  # nothing lost, but not the shard the manifest describes
    assert stats.broken_shards == 1
    assert stats.lost_samples == 0
    assert f"{shard.name}: {len(shard.read_bytes())} bytes, manifest.json says" in caplog.text


def test_a_changed_byte_inside_a_member_is_caught_by_the_sha256(dataset, caplog):
    manifest = load_manifest(dataset)
    shard = manifest.shard_paths("train")[3]
    data = bytearray(shard.read_bytes())
    data[512 + 40] ^= 0xFF  # inside the first image: still a tar of 10 samples
    shard.write_bytes(bytes(data))
    keys, stats = keys_and_stats(check_shards_exist(manifest, "train"))
    assert len(keys) == 40
    assert stats.broken_shards == 1
    assert stats.lost_samples == 0
    assert "sha256 differs" in caplog.text


def test_intact_shards_pass_the_stream_check(tmp_path):
    for compression in ("none", "zstd"):
        root = make_tiny_dataset(tmp_path / compression, n=20, compression=compression)
        keys, stats = keys_and_stats(check_shards_exist(load_manifest(root), "train"))
        assert (len(keys), stats.broken_shards) == (20, 0)


def test_readers_striding_over_few_shards_count_a_broken_one_once(dataset):
    refs = check_shards_exist(load_manifest(dataset), "train")[:2]
    flip_header_bit(refs[0].path, member=4)
    every = [ReadStats() for _ in range(4)]
    slots = [Slot(r, 2, w, 2) for r in range(2) for w in range(2)]
    for stats, slot in zip(every, slots, strict=True):
        list(read_samples(refs, slot=slot, stats=stats))  # 4 readers over 2 shards: striding
    assert sum(s.broken_shards for s in every) == 1
    assert sum(s.lost_samples for s in every) == 8


class Zeros:
    def read(self, size: int = -1) -> bytes:
        return bytes(size)


@pytest.mark.parametrize(("member", "size"), [("BOMB.jpg", 100 << 20), ("BOMB.json", 2 << 20)])
def test_a_member_over_its_cap_is_never_read_and_breaks_the_shard(tmp_path, member, size):
    rng = random.Random(0)
    record = encode_record(tiny_record("OK000", "train", 0, rng))
    jpg = tiny_jpeg(0, 32, rng)
    path = tmp_path / "bomb.tar.zst"  # a few KB on disk
    with (
        open(path, "wb") as handle,
        zstandard.ZstdCompressor().stream_writer(handle) as packed,
        tarfile.open(fileobj=packed, mode="w|", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for name, data in (("OK000.jpg", jpg), ("OK000.json", record)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo(member)
        info.size = size
        tar.addfile(info, Zeros())
    assert path.stat().st_size < 50_000
    stats = ReadStats()
    assert [s.key for s in read_samples([path], stats=stats)] == ["OK000"]
    assert stats.broken_shards == 1
    assert stats.bytes_read == len(jpg) + len(record)  # the big member was not read


def write_shard_of(path, items):
    write_shard(path, [Sample(key, jpg, record) for key, jpg, record in items])
    return path


DEEP_RECORDS = [b"[" * 100_000, b'{"a":' * 100_000, b'{"order":"Diptera"' + b"]" * 10]


@pytest.mark.parametrize("bad", DEEP_RECORDS, ids=["deep-list", "deep-object", "broken"])
def test_a_record_the_parser_cannot_take_is_a_counted_bad_sample(dataset, tmp_path, bad):
    rng = random.Random(1)
    items = []
    for i, record in enumerate((None, bad, None)):
        data = record or encode_record(tiny_record(f"OK{i:03d}", "train", 0, rng))
        items.append((f"OK{i:03d}", tiny_jpeg(0, 32, rng), data))
    shard = write_shard_of(tmp_path / "deep.tar", items)
    encoding = load_encoding(load_manifest(dataset), "order", ["dna_bin"])
    spec = StreamSpec((shard,), batch_size=8, image_size=32, passes=1, shuffle=False)
    (batch,) = list(BatchStream(spec, encoding))
    assert batch.keys == ("OK000", "OK002") and batch.state.corrupt == 1
    with pytest.raises(CorruptDataError, match="OK001"):
        list(BatchStream(replace(spec, strict=True), encoding))
    (last,) = list(SplitStream([shard], encoding, 32, batch_size=8))  # evaluate's stream
    assert last["processids"] == ["OK000", "OK002"] and last["skipped"] == {"corrupt sample": 1}


def test_evaluate_counts_a_shard_that_ends_early_as_broken(dataset):
    manifest = load_manifest(dataset)
    flip_header_bit(manifest.shard_paths("train")[0], member=2)
    encoding = load_encoding(manifest, "order", ["dna_bin"])
    stream = SplitStream(check_shards_exist(manifest, "train"), encoding, 32, batch_size=64)
    (batch,) = list(stream)
    assert len(batch["processids"]) == 31
    assert batch["reader"]["broken shards"] == 1  # and `not_read` is 40 - 31


def refuse_nan(token):
    raise ValueError(f"{token} is not JSON")


def test_records_are_strict_json_with_non_finite_numbers_as_null():
    record = {"processid": "A", "coord-lat": math.nan, "coord-lon": math.inf,
              "area_fraction": 0.25, "bbox": [1.0, -math.inf, 3.0, 4.0]}  # fmt: skip
    data = encode_record(record)
    parsed = json.loads(data, parse_constant=refuse_nan)
    assert parsed == {**record, "coord-lat": None, "coord-lon": None, "bbox": [1.0, None, 3.0, 4.0]}
    assert decode_record(data) == parsed
    finite = {"processid": "B", "coord-lat": 1.5}  # finite records: the bytes of before
    assert encode_record(finite) == b'{"coord-lat":1.5,"processid":"B"}'


def test_old_records_with_nan_tokens_still_decode_with_none():
    old = b'{"coord-lat":NaN,"coord-lon":-Infinity,"scale_factor":1e999,"order":"Diptera"}'
    assert decode_record(old) == {
        "coord-lat": None, "coord-lon": None, "scale_factor": None, "order": "Diptera",
    }  # fmt: skip


def test_ingest_writes_non_finite_numeric_cells_as_null(tmp_path):
    synth = tmp_path / "synth"
    assert invoke("synth", synth, "--n", 40, "--seed", 5, "--quiet").exit_code == 0
    csv = synth / "metadata.csv"
    table = pl.read_csv(csv, infer_schema=False)
    odd = ["NaN", "inf", "-Infinity", "1e999"]
    table = table.with_columns(
        pl.Series("coord-lat", [odd[i % 4] for i in range(table.height)]),
        pl.Series("coord-lon", ["nan"] * table.height),
    )
    table.write_csv(csv)
    out = tmp_path / "ds"
    result = invoke("ingest", csv, "--images", synth / "images" / "original_full", "--bbox",
                    synth / "bbox.tsv", "--out", out, "--min-class-count", 1, "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [
        json.loads(s.json, parse_constant=refuse_nan)
        for split in load_manifest(out).splits
        for s in read_samples(load_manifest(out).shard_paths(split))
    ]
    assert records and all(r["coord-lat"] is None and r["coord-lon"] is None for r in records)


TINY = ["--device", "cpu", "--image-size", "32", "--cells", "2", "--channels", "4",
        "--batch-size", "8", "--workers", "0", "--shuffle-buffer", "16", "--epochs", "1"]  # fmt: skip


def test_train_counts_a_shard_that_ends_early_and_prints_it_with_the_epoch(dataset, tmp_path):
    shard = load_manifest(dataset).shard_paths("train")[1]
    flip_header_bit(shard, member=4)
    result = invoke("train", dataset, "--out", tmp_path / "run", *TINY)
    assert result.exit_code == 0, result.output
    (epoch,) = [json.loads(line) for line in (tmp_path / "run" / "epochs.jsonl").open()]
    assert epoch["skipped"]["broken_shards"] >= 1 and epoch["skipped"]["lost_samples"] >= 8
    line = next(ln for ln in result.output.splitlines() if ln.startswith("epoch 1/1"))
    assert f"broken shards {epoch['skipped']['broken_shards']} (~" in line
    strict = invoke("train", dataset, "--out", tmp_path / "strict", *TINY, "--strict")
    assert strict.exit_code == 1
    assert shard.name in strict.output and "Traceback" not in strict.output


def with_vocab_sizes(root):
    """make_tiny_dataset's manifest lacks the vocabulary sizes `inspect` prints."""
    path = root / "manifest.json"
    body = json.loads(path.read_text())
    for entry in body["vocabs"].values():
        entry["size"] = 0
    path.write_text(json.dumps(body))
    return root


def test_inspect_verify_lists_files_the_manifest_does_not_and_exits_1(dataset):
    with_vocab_sizes(dataset)
    clean = invoke("inspect", dataset, "--verify")
    assert clean.exit_code == 0, clean.output
    shards = dataset / "shards"
    (shards / "train" / "train-000009.tar").write_bytes((shards / "train/train-000000.tar").read_bytes())  # fmt: skip
    (shards / "train" / "train-000001.tar.tmp").write_bytes(b"half a shard")
    (shards / "pretrain").mkdir()
    (shards / "pretrain" / "pretrain-000000.tar").write_bytes(b"")
    result = invoke("inspect", dataset, "--verify")
    assert result.exit_code == 1
    extra = sorted(ln.split()[1] for ln in result.output.splitlines() if ln.startswith("EXTRA"))
    assert extra == ["shards/pretrain:", "shards/train/train-000001.tar.tmp:",
                     "shards/train/train-000009.tar:"]  # fmt: skip
    assert [p.kind for p in verify_dataset(load_manifest(dataset))] == ["extra"] * 3


def test_a_one_read_stream_counts_a_broken_last_shard_when_its_samples_fill_the_batches(
    dataset,
):
    """Validation reads its split once: when the intact shards' samples fill the last batch
    exactly, that batch must still carry the broken shard behind it (read one batch ahead)."""
    manifest = load_manifest(dataset)
    refs = check_shards_exist(manifest, "train")  # 4 shards of 10 samples
    data = tar_of(refs[-1].path)  # the last shard: cut inside its first sample's 2nd member
    first = 512 + -(-int(data[124:136].rstrip(b"\0 "), 8) // 512) * 512
    refs[-1].path.write_bytes(data[: first + 512 + 100])
    intact = sum(ref.samples for ref in refs[:-1])
    spec = StreamSpec(tuple(refs), batch_size=intact, image_size=16, passes=1, shuffle=False)
    encoding = load_encoding(manifest, "order", [])
    batches = list(BatchStream(spec, encoding))
    assert [len(b) for b in batches] == [intact]
    assert batches[-1].state.broken_shards == 1 and batches[-1].state.lost_samples >= 1


def test_train_reports_what_the_validation_stream_skipped_with_the_epoch(dataset, tmp_path):
    shard = load_manifest(dataset).shard_paths("val")[0]
    flip_header_bit(shard, member=4)
    result = invoke("train", dataset, "--out", tmp_path / "run", *TINY)
    assert result.exit_code == 0, result.output
    (epoch,) = [json.loads(line) for line in (tmp_path / "run" / "epochs.jsonl").open()]
    assert epoch["val_skipped"]["broken_shards"] == 1 and epoch["val_skipped"]["lost_samples"]
    line = next(ln for ln in result.output.splitlines() if ln.startswith("epoch 1/1"))
    assert "val: broken shards 1 (~" in line


def test_a_shard_that_breaks_before_a_resume_in_the_replayed_part_is_counted_once(tmp_path):
    """The resumed stream replays its pass up to where it stopped: a shard already read
    whole that is broken now (rewritten, or a read error during the replay) sends the
    replay into later shards, whose samples this pass then does not give; the skip counts
    must say so, as a first read would (found by review: they kept the saved counts)."""
    manifest = load_manifest(
        make_tiny_dataset(tmp_path / "ds", n=48, shards_per_split=4, image_size=16)
    )
    encoding = load_encoding(manifest, "order", ())
    spec = StreamSpec(shards=tuple(check_shards_exist(manifest, "train")), batch_size=4,
                      image_size=16, num_batches=8, passes=None, shuffle=False,
                      shuffle_buffer=0)  # fmt: skip
    stream, position = iter(BatchStream(spec, encoding)), StreamPosition()
    for _ in range(4):  # the first shard whole (12 samples) and 4 of the second
        position.advance(next(stream))
    assert position.skipped()["broken_shards"] == 0
    flip_header_bit(manifest.shard_paths("train")[0], member=8)  # now gives 4 of its 12

    resumed = StreamPosition.from_dict(position.to_dict())
    for batch in BatchStream(spec, encoding, resumed):
        resumed.advance(batch)
    skipped = resumed.skipped()
    assert (skipped["broken_shards"], skipped["lost_samples"]) == (1, 8)
