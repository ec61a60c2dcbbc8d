"""Ingest on Ray (local mode, 2 CPUs) writes exactly the local executor's shards."""

from __future__ import annotations

import builtins

import pytest
from ingest_helpers import ingest, run_cli, shard_files


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    run_cli("synth", out, "--n", 240, "--seed", 5, "--corrupt", 1, "--workers", 2)
    return out


def test_ray_executor_writes_byte_identical_shards_and_manifest(synth, tmp_path):
    pytest.importorskip("ray")
    options = ("--size", "48", "--shard-size", "40", "--min-class-count", "10", "--workers", "2")
    ingest(synth, tmp_path / "local", *options)
    result = ingest(synth, tmp_path / "ray", *options, "--executor", "ray")
    assert "rejected" in result.output and "missing_file" in result.output
    assert shard_files(tmp_path / "ray") == shard_files(tmp_path / "local")
    local_manifest = (tmp_path / "local" / "manifest.json").read_bytes()
    assert (tmp_path / "ray" / "manifest.json").read_bytes() == local_manifest


def test_without_ray_the_option_says_how_to_install_it(synth, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    result = ingest(synth, tmp_path / "x", "--executor", "ray", "--size", "32", ok=False)
    assert result.exit_code != 0
    assert "pip install 'bionas[ray]'" in result.output
