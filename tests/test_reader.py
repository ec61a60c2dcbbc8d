"""The streaming reader and the training batches: coverage, order, corruption, counts."""

from __future__ import annotations

import io
import itertools
import random
import tarfile
from dataclasses import replace

import pytest
import torch
from datasets import make_tiny_dataset, tiny_jpeg, tiny_record  # tests/datasets.py
from PIL import Image

from bionas.errors import BionasError
from bionas.manifests.manifest import load_manifest
from bionas.manifests.vocab import build_vocab, write_vocab
from bionas.shards.format import encode_record
from bionas.shards.reader import (
    CorruptDataError,
    ReadStats,
    Slot,
    permute,
    read_samples,
)
from bionas.shards.writer import Sample, write_shard
from bionas.trainer.data import BatchStream, StreamPosition, StreamSpec, make_loader
from bionas.trainer.encoding import load_encoding
from bionas.trainer.transforms import (
    BIOSCAN_MEAN,
    BIOSCAN_STD,
    normalize_images,
    preprocess_image,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture
def dataset(tmp_path):
    return make_tiny_dataset(tmp_path / "ds", n=40, shards_per_split=5)


def encoding_of(dataset):
    return load_encoding(load_manifest(dataset), "order", ["dna_bin", "class"])


def keys_of_slots(shards, slots, **kwargs):
    return [s.key for slot in slots for s in read_samples(shards, slot=slot, **kwargs)]


@pytest.mark.parametrize(("world_size", "num_workers"), [(1, 2), (2, 1), (2, 2), (3, 3)], ids=str)
def test_every_sample_is_read_exactly_once_per_epoch_across_ranks_and_workers(
    dataset, world_size, num_workers
):
    shards = load_manifest(dataset).shard_paths("train")  # 5 shards; 9 slots -> striding
    slots = [
        Slot(r, world_size, w, num_workers) for r in range(world_size) for w in range(num_workers)
    ]
    keys = keys_of_slots(shards, slots, seed=3, epoch=1, shuffle_buffer=8)
    assert len(keys) == 40
    assert len(set(keys)) == 40


def test_no_reader_is_empty_when_there_are_fewer_shards_than_readers(dataset):
    shards = load_manifest(dataset).shard_paths("train")[:2]
    slots = [Slot(r, 2, w, 2) for r in range(2) for w in range(2)]
    per_slot = [list(read_samples(shards, slot=s)) for s in slots]
    assert all(per_slot)
    assert len({s.key for part in per_slot for s in part}) == sum(map(len, per_slot)) == 16


def test_shard_order_changes_between_epochs_and_is_reproducible():
    shards = [f"train-{i:06d}.tar" for i in range(20)]
    assert permute(shards, seed=0, epoch=0) == permute(shards, seed=0, epoch=0)
    assert permute(shards, seed=0, epoch=0) != permute(shards, seed=0, epoch=1)
    assert permute(shards, seed=0, epoch=0) != permute(shards, seed=1, epoch=0)
    assert sorted(permute(shards, seed=0, epoch=5)) == shards


def test_sample_order_is_a_function_of_seed_and_epoch(dataset):
    shards = load_manifest(dataset).shard_paths("train")

    def order(epoch):
        return [s.key for s in read_samples(shards, seed=0, epoch=epoch, shuffle_buffer=16)]

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert sorted(order(0)) == sorted(order(1))


def write_records(path, items):
    """A shard from (record-or-bytes, jpeg-bytes) pairs."""
    samples = []
    for record, jpg in items:
        data = record if isinstance(record, bytes) else encode_record(record)
        key = record["processid"] if isinstance(record, dict) else f"BAD{len(samples)}"
        samples.append(Sample(key, jpg, data))
    write_shard(path, samples)
    return path


def good(i, cls=0):
    rng = random.Random(i)
    return tiny_record(f"OK{i:03d}", "train", cls, rng), tiny_jpeg(cls, 32, rng)


def test_corrupt_samples_are_skipped_and_counted_or_fail_with_strict(dataset, tmp_path):
    truncated = good(99)[1][:200]
    shard = write_records(
        tmp_path / "bad.tar",
        [good(0), (good(1)[0], b"not a jpeg"), good(2), (b"{not json", good(3)[1]),
         (good(4)[0], truncated), good(5)],
    )  # fmt: skip
    spec = StreamSpec((shard,), batch_size=8, image_size=32, passes=1, shuffle=False)
    batches = list(BatchStream(spec, encoding_of(dataset)))
    assert [k for b in batches for k in b.keys] == ["OK000", "OK002", "OK005"]
    assert batches[-1].state.corrupt == 3
    with pytest.raises(CorruptDataError, match="bad.tar"):
        list(BatchStream(replace(spec, strict=True), encoding_of(dataset)))


def test_sample_missing_a_member_is_skipped_and_counted(tmp_path):
    path = tmp_path / "incomplete.tar"
    record, jpg = good(0)
    with tarfile.open(path, "w") as tar:
        for name, data in (("A.jpg", jpg), ("B.json", encode_record(record)), ("B.jpg", jpg)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    stats = ReadStats()
    assert [s.key for s in read_samples([path], stats=stats)] == ["B"]
    assert stats.incomplete_samples == 1
    with pytest.raises(CorruptDataError, match="missing"):
        list(read_samples([path], stats=ReadStats(strict=True)))


def test_unreadable_shard_is_skipped_and_counted_or_fails_with_strict(dataset):
    shards = load_manifest(dataset).shard_paths("train")
    shards[1].write_bytes(shards[1].read_bytes()[:700])  # truncated mid-member
    stats = ReadStats()
    keys = [s.key for s in read_samples(shards, stats=stats, shuffle_shards=False)]
    assert stats.broken_shards == 1
    assert 40 - 8 <= len(keys) < 40  # the other four shards are read in full
    with pytest.raises(CorruptDataError, match=shards[1].name):
        list(read_samples(shards, stats=ReadStats(strict=True)))


def test_sample_without_a_known_class_is_skipped_and_counted(dataset, tmp_path):
    record, jpg = good(1)
    shard = write_records(
        tmp_path / "u.tar",
        [
            good(0),
            ({**record, "order": None}, jpg),
            ({**record, "processid": "X", "order": "Odonata"}, jpg),
        ],
    )
    spec = StreamSpec((shard,), batch_size=4, image_size=32, passes=1, shuffle=False)
    (batch,) = list(BatchStream(spec, encoding_of(dataset)))
    assert batch.keys == ("OK000",)
    assert batch.state.unknown_class == 2


def test_labels_and_metadata_come_from_the_vocabularies(dataset):
    encoding = encoding_of(dataset)
    record = {"order": "Diptera", "dna_bin": "BOLD:NEVERSEEN", "class": "Insecta"}
    assert encoding.label(record) == encoding.class_names.index("Diptera")
    assert encoding.meta(record) == [0, encoding.meta_vocabs[1].values.index("Insecta")]
    assert encoding.num_classes == 4 == len(encoding.class_names)


def test_a_vocabulary_changed_after_the_manifest_is_refused(dataset):
    manifest = load_manifest(dataset)
    write_vocab(build_vocab("dna_bin", {"BOLD:X": 3}), dataset / "manifests")
    with pytest.raises(BionasError, match=r"vocab_dna_bin\.json.*bionas vocab"):
        load_encoding(manifest, "order", ["dna_bin"])
    load_encoding(manifest, "order", ["class"])  # the untouched ones still load


def test_a_target_without_a_target_vocabulary_is_refused(dataset):
    with pytest.raises(BionasError, match="feature vocabulary.*bionas vocab"):
        load_encoding(load_manifest(dataset), "family", [])


@pytest.mark.parametrize("workers", [0, 2])
def test_an_epoch_has_exactly_the_requested_number_of_full_batches(dataset, workers):
    shards = tuple(load_manifest(dataset).shard_paths("train"))
    spec = StreamSpec(shards, batch_size=6, image_size=32, num_batches=9, shuffle_buffer=8)
    batches = list(make_loader(BatchStream(spec, encoding_of(dataset)), workers))
    assert len(batches) == 9  # 54 samples from 40: wraps into the next permutation
    assert all(len(b) == 6 for b in batches)
    assert [b.worker for b in batches] == [i % max(workers, 1) for i in range(9)]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stream_resumed_at_batch_k_continues_exactly(dataset, workers):
    shards = tuple(load_manifest(dataset).shard_paths("train"))
    spec = StreamSpec(shards, batch_size=4, image_size=32, num_batches=12, shuffle_buffer=8,
                      meta_dropout=0.3)  # fmt: skip
    encoding = encoding_of(dataset)
    full = list(make_loader(BatchStream(spec, encoding), workers))
    position = StreamPosition()
    for batch in full[:5]:
        position.advance(batch)
    rest = list(make_loader(BatchStream(spec, encoding, position), workers))
    assert [b.keys for b in rest] == [b.keys for b in full[5:]]
    for a, b in zip(rest, full[5:], strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.meta, b.meta)


def test_validation_stream_reads_every_sample_once_with_a_short_last_batch(dataset):
    shards = tuple(load_manifest(dataset).shard_paths("train"))
    spec = StreamSpec(shards, batch_size=16, image_size=32, passes=1, shuffle=False)
    batches = list(make_loader(BatchStream(spec, encoding_of(dataset)), 2))
    keys = [k for b in batches for k in b.keys]
    assert len(keys) == len(set(keys)) == 40


def test_meta_dropout_replaces_indices_by_unknown_reproducibly(dataset):
    shards = tuple(load_manifest(dataset).shard_paths("train"))
    spec = StreamSpec(shards, batch_size=40, image_size=32, num_batches=1, meta_dropout=0.5)
    first = next(iter(BatchStream(spec, encoding_of(dataset)))).meta
    again = next(iter(BatchStream(spec, encoding_of(dataset)))).meta
    plain = next(iter(BatchStream(replace(spec, meta_dropout=0.0), encoding_of(dataset)))).meta
    assert torch.equal(first, again)
    assert (plain > 0).all() and 0.3 < (first == 0).float().mean() < 0.7


def test_preprocess_resizes_the_shorter_side_centre_crops_and_normalises():
    image = Image.new("RGB", (90, 60), tuple(round(m * 255) for m in BIOSCAN_MEAN))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    for source in (image, buffer.getvalue()):
        tensor = preprocess_image(source, 48)
        assert tensor.shape == (3, 48, 48) and tensor.dtype == torch.float32
        assert tensor.abs().max() < 0.05  # the mean colour normalises to ~0


def test_batches_carry_uint8_pixels_that_normalise_like_the_float_transform(dataset):
    shards = tuple(load_manifest(dataset).shard_paths("train"))
    spec = StreamSpec(shards, batch_size=8, image_size=32, num_batches=1, shuffle=False)
    batch = next(iter(BatchStream(replace(spec, uint8=True), encoding_of(dataset))))
    assert batch.images.dtype == torch.uint8 and batch.images.shape == (8, 3, 32, 32)
    pixels = batch.images.float() / 255.0
    mean, std = torch.tensor(BIOSCAN_MEAN).view(3, 1, 1), torch.tensor(BIOSCAN_STD).view(3, 1, 1)
    torch.testing.assert_close(normalize_images(batch.images), (pixels - mean) / std)
    normalised = next(iter(BatchStream(spec, encoding_of(dataset))))  # the default, for CPU
    assert normalised.images.dtype == torch.float32
    torch.testing.assert_close(normalised.images, normalize_images(batch.images))


def test_an_endless_stream_over_only_broken_shards_fails_instead_of_spinning(tmp_path):
    broken = tmp_path / "train-000000.tar"
    broken.write_bytes(b"\0" * 100)
    stats = ReadStats()
    with pytest.raises(CorruptDataError, match="no readable samples"):
        next(read_samples([broken], passes=None, stats=stats))
    assert stats.broken_shards >= 1


def test_a_shard_truncated_at_a_member_boundary_is_reported(tmp_path, caplog):
    from bionas.manifests.manifest import load_manifest
    from bionas.trainer.data import check_shards_exist

    root = make_tiny_dataset(tmp_path / "ds", n=24, shards_per_split=2)
    manifest = load_manifest(root)
    shard = manifest.shard_paths("train")[0]
    data = shard.read_bytes()
    shard.write_bytes(data[:1024])  # whole 512-byte blocks: tarfile sees a clean end
    with pytest.raises(BionasError, match="differ in size"):
        check_shards_exist(manifest, "train", strict=True)
    with caplog.at_level("WARNING"):
        refs = check_shards_exist(manifest, "train")
    assert [r.path for r in refs] == manifest.shard_paths("train")
    assert "differ in size" in caplog.text
    stats = ReadStats()
    assert len(list(read_samples(refs, stats=stats))) == 12  # the other shard
    # its first sample's first member is cut mid-read: that sample is lost too, not 'given'
    assert (stats.broken_shards, stats.lost_samples) == (1, 12)


def test_an_endless_stream_started_at_pass_p_is_the_tail_of_the_whole_stream(dataset):
    shards = load_manifest(dataset).shard_paths("train")[:2]  # 16 samples a pass
    slot = Slot(1, 2, 0, 1)  # one rank of two: 8 samples a pass
    options = {"slot": slot, "seed": 4, "passes": None, "shuffle_buffer": 5}
    whole = [(s.key, s.pass_index) for s in itertools.islice(read_samples(shards, **options), 45)]
    assert [p for _, p in whole] == [i // 8 for i in range(45)]
    stats = ReadStats()
    started = read_samples(shards, first_pass=3, skip=5, stats=stats, **options)
    first = next(started)
    assert (first.key, first.pass_index) == whole[29]  # the 6th sample of pass 3
    assert stats.shards_opened == 1  # this slot's one shard of pass 3, no earlier pass
    assert [(s.key, s.pass_index) for s in itertools.islice(started, 15)] == whole[30:45]


def test_reader_counts_the_shards_it_opens_and_the_bytes_it_reads(dataset):
    shards = load_manifest(dataset).shard_paths("train")
    stats = ReadStats()
    samples = list(read_samples(shards, passes=2, stats=stats))
    assert (stats.shards_opened, stats.samples_read) == (2 * len(shards), 80)
    assert stats.bytes_read == 2 * sum(len(s.jpg) + len(s.json) for s in samples[:40])
