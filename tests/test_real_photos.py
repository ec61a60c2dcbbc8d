"""Real BIOSCAN-5M photos (shared/fixtures/bioscan-real): ingest, train a few steps, predict."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from ingest_helpers import read_samples, run_cli
from PIL import Image

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "bioscan-real"
pytestmark = pytest.mark.skipif(
    not FIXTURE.exists(), reason="shared/fixtures/bioscan-real not present"
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "ds"
    run_cli(
        "ingest", FIXTURE / "metadata.csv", "--images", FIXTURE / "images" / "original_full",
        "--out", out, "--target", "family", "--min-class-count", "4",
        "--split-source", "official", "--size", "128", "--workers", "1", "--quiet",
    )  # fmt: skip
    return out


def test_real_photos_without_bbox_are_resized_whole_and_keep_their_labels(dataset):
    samples = read_samples(dataset)
    assert len(samples) == 18
    for pid, sample in samples.items():
        image = Image.open(io.BytesIO(sample["jpg"]))
        assert image.size == (171, 128), pid  # 1024x768 whole frame, shorter side 128
        assert sample["record"]["order"] == "Diptera"
        assert sample["record"]["bbox"] is None


def test_families_with_fewer_than_4_photos_fold_into_other(dataset):
    # the fixture's 18 photos: Chironomidae 6, four other families 3 each
    vocab = json.loads((dataset / "manifests" / "vocab_family.json").read_text())
    assert vocab["min_count"] == 4
    assert vocab["values"] == ["<unk>", "Chironomidae", "Other"]
    assert vocab["counts"][1:] == [6, 12]
    assert vocab["folded"] == {
        "Agromyzidae": 3, "Drosophilidae": 3, "Muscidae": 3, "Sciaridae": 3
    }  # fmt: skip
    assert sum(vocab["counts"]) == 18


def test_smoke_train_and_predict_on_real_photos(dataset, tmp_path, torch_single_thread):
    run = tmp_path / "run"
    run_cli(
        "train", dataset, "--out", run, "--image-size", "32", "--channels", "4", "--cells", "3",
        "--batch-size", "4", "--max-steps", "4", "--workers", "0", "--quiet", "--device", "cpu",
        "--meta-fields", "none",
    )  # fmt: skip
    photo = sorted((FIXTURE / "images" / "original_full" / "test").glob("*.jpg"))[0]
    result = run_cli("predict", run, photo, "--top-k", "2")
    body = json.loads(result.stdout)  # a note about the supernet goes to stderr
    entry = body["predictions"][0]
    assert entry["image"] == str(photo) and body["target"] == "family"
    probabilities = [p["probability"] for p in entry["top_k"]]
    assert len(probabilities) == 2 and probabilities[0] >= probabilities[1]
