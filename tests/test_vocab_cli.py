"""`bionas vocab` through the CLI: the Other threshold, reruns, alignment, profiles, and
regenerating a dataset's vocabularies without touching its shards."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from ingest_helpers import ingest, run_cli, shard_files

from bionas.cli import main

pytestmark = pytest.mark.usefixtures("torch_single_thread")
TINY_TRAIN = ["--device", "cpu", "--channels", "4", "--cells", "3", "--image-size", "32",
              "--max-steps", "2", "--batch-size", "8", "--workers", "0", "--quiet"]  # fmt: skip


def invoke(*args: object):
    """The CLI as a user meets it: exceptions become exit codes and printed messages."""
    return CliRunner().invoke(main, [str(a) for a in args])


def write_csv(path: Path, header: str, rows: list[tuple]) -> Path:
    lines = [header] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def vocab_file(folder: Path, field: str = "order") -> dict:
    return json.loads((folder / f"vocab_{field}.json").read_text())


@pytest.fixture
def threshold_csv(tmp_path) -> Path:
    """Diptera 500 train rows; Coleoptera 499 train + 3 test; one spider; one empty order."""
    rows = [("Insecta", "Diptera", "train")] * 500
    rows += [("Insecta", "Coleoptera", "train")] * 499 + [("Insecta", "Coleoptera", "test")] * 3
    rows += [("Arachnida", "Araneae", "train"), ("Insecta", "", "train")]
    rows = [(f"P{i:05d}", *row) for i, row in enumerate(rows)]
    return write_csv(tmp_path / "meta.csv", "processid,class,order,split", rows)


def test_order_with_499_counted_records_folds_into_other_and_500_stays(threshold_csv, tmp_path):
    out = tmp_path / "train-only"
    result = run_cli("vocab", threshold_csv, "--out", out, "--field", "class",
                     "--count-splits", "train")  # fmt: skip
    vocab = vocab_file(out)
    assert vocab["values"] == ["<unk>", "Diptera", "Other"]
    assert vocab["counts"] == [0, 500, 500]  # Other = 499 Coleoptera + 1 Araneae
    assert vocab["folded"] == {"Araneae": 1, "Coleoptera": 499}
    assert (vocab["min_count"], vocab["counted_splits"]) == (500, ["train"])
    assert "counted splits: train" in result.output and "2 classes below 500" in result.output
    assert vocab_file(out, "class")["counted_splits"] == ["train"]


def test_every_split_is_counted_unless_told_and_the_file_says_so(threshold_csv, tmp_path):
    run_cli("vocab", threshold_csv, "--out", tmp_path / "all", "--field", "class")
    vocab = vocab_file(tmp_path / "all")
    assert vocab["values"] == ["<unk>", "Coleoptera", "Diptera", "Other"]  # 502 of them now
    assert vocab["counts"] == [0, 502, 500, 1] and vocab["counted_splits"] == ["all"]
    run_cli("vocab", threshold_csv, "--out", tmp_path / "499", "--field", "class",
            "--count-splits", "train", "--min-count", 499)  # fmt: skip
    assert vocab_file(tmp_path / "499")["values"] == ["<unk>", "Diptera", "Coleoptera", "Other"]


def test_padded_values_and_splits_count_stripped_and_blank_values_count_as_missing(tmp_path):
    rows = [("P0", "Insecta", " Diptera ", "train"), ("P1", "Insecta", "Diptera", " train"),
            ("P2", " Insecta", "   ", "train"), ("P3", "Insecta", "", "train\t"),
            ("P4", "Insecta", "Diptera", "test"), ("P5", "Insecta", "Coleoptera", "train ")]  # fmt: skip
    csv = write_csv(tmp_path / "meta.csv", "processid,class,order,split", rows)
    run_cli("vocab", csv, "--out", tmp_path / "v", "--field", "class", "--min-count", 1,
            "--count-splits", "train")  # fmt: skip
    order = vocab_file(tmp_path / "v")
    assert (order["values"], order["counts"]) == (["<unk>", "Diptera", "Coleoptera"], [0, 2, 1])
    assert vocab_file(tmp_path / "v", "class")["counts"] == [0, 5]  # P2's class is stripped


def test_vocab_files_are_identical_across_reruns(tmp_path):
    run_cli("synth", tmp_path / "i1m", "--profile", "insects-1m", "--n", 2000, "--no-images",
            "--quiet")  # fmt: skip
    csv = tmp_path / "i1m" / "metadata.csv"
    for out in ("one", "two", "one"):  # the third run overwrites the first
        run_cli("vocab", csv, "--profile", "insects-1m", "--min-count", 20, "--out", tmp_path / out)
    one = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(one) == 10 and one == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in one:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_alignment_of_two_datasets_lists_the_shared_only_and_folded_classes(tmp_path):
    bioscan = [("Diptera", 5), ("Hymenoptera", 4), ("Coleoptera", 3), ("Trombidiformes", 3),
               ("Araneae", 2), ("Isopoda", 1)]  # fmt: skip
    insects = [("Diptera", 6), ("Araneae", 4), ("Odonata", 3), ("Coleoptera", 2),
               ("Isopoda", 1), ("Solifugae", 1)]  # fmt: skip
    for name, counts, key in (("bioscan", bioscan, "processid"), ("insects", insects, "image_id")):
        rows = [(f"{name}{i}", order, order) for order, n in counts for i in range(n)]
        write_csv(tmp_path / f"{name}.csv", f"{key},class,order", rows)
    run_cli("vocab", tmp_path / "bioscan.csv", "--out", tmp_path / "vb", "--field", "class",
            "--min-count", 3)  # fmt: skip
    result = run_cli("vocab", tmp_path / "insects.csv", "--profile", "insects-1m", "--field",
                     "class", "--min-count", 3, "--out", tmp_path / "vi",
                     "--align-to", tmp_path / "vb")  # fmt: skip
    alignment = json.loads((tmp_path / "vi" / "alignment.json").read_text())
    expected = {
        "shared": ["Diptera"],
        "only_ours": ["Odonata", "Solifugae"],
        "only_theirs": ["Hymenoptera", "Trombidiformes"],
        "folded_ours_kept_theirs": ["Coleoptera"],
        "folded_theirs_kept_ours": ["Araneae"],
        "folded_both": ["Isopoda"],
    }
    assert {key: alignment[key] for key in expected} == expected
    assert alignment["counts"] == {key: len(value) for key, value in expected.items()}
    assert "only_ours                     2  Odonata, Solifugae" in result.output


def test_alignment_of_the_two_synthetic_profiles_matches_their_counts(tmp_path):
    run_cli("synth", tmp_path / "b", "--n", 3000, "--no-images", "--quiet")
    run_cli(
        "synth", tmp_path / "i", "--profile", "insects-1m", "--n", 3000, "--no-images", "--quiet"
    )
    run_cli("vocab", tmp_path / "b" / "metadata.csv", "--out", tmp_path / "vb", "--min-count", 20)
    run_cli("vocab", tmp_path / "i" / "metadata.csv", "--profile", "insects-1m", "--min-count", 20,
            "--out", tmp_path / "vi", "--align-to", tmp_path / "vb")  # fmt: skip
    alignment = json.loads((tmp_path / "vi" / "alignment.json").read_text())

    def kept_and_folded(folder: Path) -> tuple[set[str], set[str]]:
        counts = pl.read_csv(folder / "metadata.csv", columns=["order"])["order"].drop_nulls()
        counts = dict(counts.value_counts().iter_rows())
        return {o for o, n in counts.items() if n >= 20}, {o for o, n in counts.items() if n < 20}

    (ik, if_), (bk, bf) = kept_and_folded(tmp_path / "i"), kept_and_folded(tmp_path / "b")
    assert set(alignment["shared"]) == ik & bk
    assert set(alignment["only_ours"]) == (ik | if_) - (bk | bf)
    assert set(alignment["only_theirs"]) == (bk | bf) - (ik | if_)
    assert set(alignment["folded_ours_kept_theirs"]) == if_ & bk
    assert set(alignment["folded_theirs_kept_ours"]) == bf & ik
    assert set(alignment["folded_both"]) == if_ & bf
    assert {"Diptera", "Hymenoptera", "Coleoptera", "Lepidoptera", "Hemiptera"} <= ik & bk
    assert {"Solifugae", "Amblypygi"} <= set(alignment["only_ours"])


BAD_PROFILE = """
name = "my-insects"
id = "image_id"
image_path = "{file_name}"

[ranks]
class = "class"
order = "Order"   # the CSV calls it "order"
"""


def test_a_profile_toml_with_a_wrong_column_names_the_profile_and_the_column(tmp_path):
    write_csv(tmp_path / "meta.csv", "image_id,file_name,class,order", [("a1", "x.jpg", "I", "O")])
    (tmp_path / "bad.toml").write_text(BAD_PROFILE)
    vocab = invoke("vocab", tmp_path / "meta.csv", "--profile-file", tmp_path / "bad.toml",
                   "--out", tmp_path / "v")  # fmt: skip
    ingest_run = invoke("ingest", tmp_path / "meta.csv", "--images", tmp_path, "--out",
                        tmp_path / "ds", "--profile-file", tmp_path / "bad.toml")  # fmt: skip
    for result in (vocab, ingest_run):
        assert result.exit_code == 1, result.output
        assert "profile 'my-insects'" in result.output and "column(s) Order" in result.output
        assert "meta.csv" in result.output and "Traceback" not in result.output
    path_typo = BAD_PROFILE.replace('"Order"', '"order"').replace("{file_name}", "{filename}")
    (tmp_path / "typo.toml").write_text(path_typo)
    result = invoke("ingest", tmp_path / "meta.csv", "--images", tmp_path, "--out",
                    tmp_path / "ds", "--profile-file", tmp_path / "typo.toml")  # fmt: skip
    assert result.exit_code == 1 and "column(s) filename" in result.output


def test_regenerated_vocab_changes_the_trainers_class_count_without_touching_shards(tmp_path):
    run_cli("synth", tmp_path / "s", "--n", 300, "--seed", 2, "--workers", 2, "--quiet")
    dataset = tmp_path / "ds"
    ingest(tmp_path / "s", dataset, "--min-class-count", 2, "--size", 48, "--workers", 2)
    shards, before = shard_files(dataset), json.loads((dataset / "manifest.json").read_text())
    run_cli("train", dataset, "--out", tmp_path / "run1", *TINY_TRAIN)

    result = run_cli("vocab", tmp_path / "s" / "metadata.csv", "--out", dataset, "--min-count", 20)
    assert f"to {dataset / 'manifests'}" in result.output
    after = json.loads((dataset / "manifest.json").read_text())
    assert shard_files(dataset) == shards  # same shard files, byte for byte
    assert after["splits"] == before["splits"]
    assert after["vocab_version"] == before.get("vocab_version", 1) + 1
    assert after["vocab_regenerated"]["min_count"] == 20
    order = vocab_file(dataset / "manifests")
    assert after["vocabs"]["order"]["sha256"] == order["sha256"]

    run_cli("train", dataset, "--out", tmp_path / "run2", *TINY_TRAIN)
    old = json.loads((tmp_path / "run1" / "config.json").read_text())["class_names"]
    new = json.loads((tmp_path / "run2" / "config.json").read_text())["class_names"]
    assert new == order["values"][1:] and new[-1] == "Other"
    assert 2 <= len(new) < len(old)


def test_bionas_vocab_refuses_a_table_that_names_a_needed_column_twice(tmp_path):
    from click.testing import CliRunner

    from bionas.cli import main

    table = tmp_path / "meta.csv"
    table.write_text("processid,order,order,split\nA1,Diptera,Hymenoptera,train\n")
    result = CliRunner().invoke(
        main, ["vocab", str(table), "--out", str(tmp_path / "v"), "--field", "order"]
    )
    assert result.exit_code != 0 and "order" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "v").exists()
