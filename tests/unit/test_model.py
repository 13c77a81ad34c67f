from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.errors import ModelError
from router.models import store as model

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _fake_prepared(cache: Path) -> Path:
    folder = cache / model.WHEEL_MODELS[SMOL].folder
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / model.MANIFEST).write_text(json.dumps({"sha256": model.folder_checksums(folder)}))
    return folder


def test_missing_model_names_the_prepare_command(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="is not prepared") as caught:
        model.resolve(SMOL, tmp_path)
    assert "fleet model prepare" in caught.value.hint


def test_prepared_model_resolves_to_its_folder(tmp_path: Path) -> None:
    folder = _fake_prepared(tmp_path)
    assert model.resolve(SMOL, tmp_path) == str(folder)


def test_damaged_model_is_not_served(tmp_path: Path) -> None:
    folder = _fake_prepared(tmp_path)
    (folder / "model.safetensors").write_bytes(b"truncat")
    with pytest.raises(ModelError, match="damaged"):
        model.resolve(SMOL, tmp_path)


def test_prepare_is_idempotent_when_checksums_match(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _fake_prepared(tmp_path)

    def no_download(*_args: object) -> Path:
        raise AssertionError("a prepared model must not be downloaded again")

    monkeypatch.setattr(model, "_download_wheel", no_download)
    assert model.prepare(SMOL, tmp_path) == folder


def test_local_folder_must_hold_a_config(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no config.json"):
        model.resolve(str(tmp_path), tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert model.resolve(str(tmp_path), tmp_path) == str(tmp_path.resolve())


def test_hub_model_absent_from_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="not in the local Hugging Face cache") as caught:
        model.resolve("Qwen/Qwen2.5-7B-Instruct-AWQ", tmp_path)
    assert "fleet model prepare" in caught.value.hint
