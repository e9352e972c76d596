"""params.yaml is the single source of tunable numbers: it must load into the core settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from faces_core.ingest.pipeline import IngestSettings
from flows.params import load_params
from flows.params.ingest import ingest_inputs, ingest_settings

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_load_and_match_code_defaults() -> None:
    params = load_params(REPO / "params.yaml")
    settings = ingest_settings(params)
    defaults = IngestSettings()
    assert settings.download == defaults.download
    assert settings.partition == defaults.partition
    assert settings.validate == defaults.validate
    assert settings.partition.bucket_edges == (50, 100, 128, 200, 224)
    assert ingest_inputs(params)["imfdb_root"] == "data/sample/imfdb/IMFDB_final"


def test_overrides_and_proxy() -> None:
    settings = ingest_settings({}, out_dir="/tmp/x", concurrency=3, proxy="http://127.0.0.1:9")
    assert settings.out_dir == "/tmp/x"
    assert settings.download.concurrency == 3
    assert settings.download.proxies == {"http": "http://127.0.0.1:9", "https": "http://127.0.0.1:9"}


def test_unknown_key_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown key.*'download'"):
        ingest_settings({"download": {"concurency": 3}})
    bad = tmp_path / "params.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="mapping"):
        load_params(bad)
