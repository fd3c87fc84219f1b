"""Loading local Hugging Face checkpoint directories into `transformers` models.

`transformers` builds the model from `config.json`; kiln reads the weights itself from
safetensors so that every failure is a `CheckpointError` naming the file, tensor or shape at
fault (a missing file, a truncated shard, an index naming an absent shard, missing or unexpected
tensors, shape mismatches), checked before a single weight is copied. Nothing is ever
downloaded: paths are local directories, and every `from_pretrained` call is `local_files_only`.

Memory: the model is built with PyTorch's and transformers' weight initialisation switched off
(allocation only, no random fill) directly on the target device, then each checkpoint tensor is
read from its memory-mapped shard and copied into place one at a time, so peak memory is the
model plus one tensor. Pickle checkpoints (`pytorch_model.bin`) run arbitrary code when
unpickled by default; they are refused unless `allow_pickle=True`, and even then are read with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
_MAX_LISTED = 10


@dataclass(slots=True)
class LoadedModel:
    """A model ready for inference: the `transformers` causal LM in eval mode and its companions.

    `tokenizer` is None when the checkpoint has no tokenizer files (the engine then takes token
    ids only); `chat_template` is the tokenizer's Jinja template, if it has one; `path` is None
    for a built-in model built in memory; `name` is the directory or built-in name as given.
    """

    model: nn.Module
    config: Any
    tokenizer: Any | None
    chat_template: str | None
    path: Path | None
    name: str

    def encode_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a chat (`[{"role": ..., "content": ...}]`) rendered by the chat template."""
        if self.tokenizer is None or not self.chat_template:
            raise ValueError(f"model {self.name!r} has no chat template; pass plain prompts instead")
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                 tokenize=True, return_dict=False)
        return list(out)


def load_model(name_or_path: str | Path, *, dtype: torch.dtype | str | None = None,
               device: torch.device | str | None = None, allow_pickle: bool = False) -> LoadedModel:
    """A built-in model by name (`"tiny-llama"`) or a local checkpoint directory."""
    from .builtin import is_builtin, load_builtin

    if isinstance(name_or_path, str) and is_builtin(name_or_path) and not Path(name_or_path).exists():
        return load_builtin(name_or_path, dtype=dtype, device=device)
    return load_checkpoint(name_or_path, dtype=dtype, device=device, allow_pickle=allow_pickle)


def load_checkpoint(path: str | Path, *, dtype: torch.dtype | str | None = None,
                    device: torch.device | str | None = None, allow_pickle: bool = False) -> LoadedModel:
    """Load a local HF checkpoint directory as an eval-mode `transformers` causal LM.

    `dtype`: None keeps the checkpoint's `config.json` dtype (float32 when it names none);
    `device`: where the weights go (default CPU). Raises `CheckpointError` on anything wrong
    with the directory, its files or its tensors.
    """
    directory = _check_directory(path)
    config = _load_config(directory)
    files = weight_files(directory, allow_pickle=allow_pickle)
    model = _build_model(config, resolve_dtype(dtype, config), torch.device(device or "cpu"), directory)
    load_weights(model, files)
    tokenizer = load_tokenizer(directory)
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if isinstance(template, dict):  # several named templates: the default one serves chat
        template = template.get("default") or next(iter(template.values()), None)
    return LoadedModel(model=model.eval(), config=config, tokenizer=tokenizer, chat_template=template,
                       path=directory, name=str(path))


def resolve_dtype(dtype: torch.dtype | str | None, config: Any) -> torch.dtype:
    """The dtype to build in: `dtype` if given (a torch dtype or its name), else the config's."""
    if dtype is None or dtype == "auto":
        # `dtype` first: older transformers only know `torch_dtype`, newer ones warn when it is read
        dtype = getattr(config, "dtype", None) or vars(config).get("torch_dtype") or torch.float32
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"dtype {dtype!r} is not a torch dtype name (e.g. 'float32', 'bfloat16')")
        dtype = resolved
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    return dtype


def _check_directory(path: str | Path) -> Path:
    directory = Path(path).expanduser()
    if not directory.exists():
        from .builtin import BUILTIN_MODELS

        raise CheckpointError(
            f"checkpoint directory {str(path)!r} does not exist. kiln loads local directories only and "
            f"never downloads anything; download the checkpoint first (e.g. `huggingface-cli download`) "
            f"and pass its directory, or use a built-in model: {', '.join(BUILTIN_MODELS)}"
        )
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is a file; kiln loads a checkpoint directory (with config.json)")
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"config.json is missing from checkpoint directory {directory}")
    return directory


def _load_config(directory: Path) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(directory), local_files_only=True)
    except Exception as err:  # transformers raises OSError, ValueError, KeyError, JSONDecodeError
        raise CheckpointError(f"cannot read {directory / 'config.json'}: {err}") from err


def _build_model(config: Any, dtype: torch.dtype, device: torch.device, directory: Path) -> nn.Module:
    """The model with uninitialised weights on `device` (every weight is overwritten by loading)."""
    from transformers import AutoModelForCausalLM

    try:
        with _no_init_weights(), device:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except ValueError as err:  # "Unrecognized configuration class ... for AutoModelForCausalLM"
        raise CheckpointError(
            f"{directory / 'config.json'} describes a {type(config).__name__} "
            f"(model_type {getattr(config, 'model_type', '?')!r}), which has no transformers causal-LM "
            f"class: {err}"
        ) from err
    model.tie_weights()  # skipped with initialisation off; follows config.tie_word_embeddings
    return model


def _no_init_weights() -> contextlib.AbstractContextManager:
    """transformers' switch that skips random initialisation (its location moved in v5)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def weight_files(directory: str | Path, *, allow_pickle: bool = False) -> list[Path]:
    """The checkpoint's weight files, safetensors preferred; checks that every one exists."""
    directory = Path(directory)
    if (directory / SAFE_INDEX).is_file():
        return _shards_from_index(directory / SAFE_INDEX)
    if (directory / SAFE_SINGLE).is_file():
        return [directory / SAFE_SINGLE]
    others = sorted(directory.glob("*.safetensors"))
    if others:
        return others
    pickled = (directory / PICKLE_INDEX).is_file() or (directory / PICKLE_SINGLE).is_file()
    if pickled and not allow_pickle:
        raise CheckpointError(
            f"{directory} holds only a pickle checkpoint ({PICKLE_SINGLE}); unpickling can run arbitrary code, "
            f"so kiln refuses it by default. Convert it to safetensors, or pass allow_pickle=True if you trust "
            f"it (it is then read with torch.load(weights_only=True))."
        )
    if (directory / PICKLE_INDEX).is_file():
        return _shards_from_index(directory / PICKLE_INDEX)
    if (directory / PICKLE_SINGLE).is_file():
        return [directory / PICKLE_SINGLE]
    present = sorted(p.name for p in directory.iterdir())
    raise CheckpointError(
        f"no weights in {directory}: expected {SAFE_SINGLE}, or {SAFE_INDEX} with its shards; "
        f"the directory holds: {_listing(present) or 'nothing'}"
    )


def _shards_from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"cannot read shard index {index}: {err!r} (expected JSON with a 'weight_map')") from err
    for shard in shards:
        if not (index.parent / shard).is_file():
            raise CheckpointError(f"index {index.name} names shard {shard}, which is missing from {index.parent}")
    return [index.parent / shard for shard in shards]


def load_tokenizer(directory: str | Path) -> Any | None:
    """The checkpoint's tokenizer via `AutoTokenizer` (tokenizer.json through `tokenizers`), or None."""
    directory = Path(directory)
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as err:  # the many ways a tokenizer file can be wrong
        raise CheckpointError(f"cannot load the tokenizer from {directory}: {err}") from err


# ---------------------------------------------------------------------------------------------
# Weights


def load_weights(model: nn.Module, files: Iterable[str | Path]) -> None:
    """Copy the tensors of checkpoint `files` into `model`, after checking names and shapes.

    Names follow `model.state_dict()`; tied parameters (lm_head tied to the embeddings) count as
    present when any of their names is. A checkpoint saved from the base model (no
    `base_model_prefix`, like the original GPT-2 files) is accepted.
    """
    files = [Path(f) for f in files]
    targets = model.state_dict(keep_vars=True)  # name -> Parameter/buffer (tied ones repeated)
    header = {name: (file, shape) for file in files for name, shape in _tensor_shapes(file)}
    rename = _renaming(list(header), targets, getattr(model, "base_model_prefix", ""))
    _check_tensors(model, targets, {rename.get(n, n): s for n, (_, s) in header.items()})
    with torch.no_grad():
        for file in files:
            for name, tensor in _read_tensors(file):
                target = targets.get(rename.get(name, name))
                if target is not None:
                    target.copy_(tensor)


def _renaming(names: list[str], targets: dict[str, torch.Tensor], prefix: str) -> dict[str, str]:
    """Checkpoint name -> model name for tensors saved without the model's base prefix."""
    if not prefix:
        return {}
    return {n: f"{prefix}.{n}" for n in names if n not in targets and f"{prefix}.{n}" in targets}


def _check_tensors(model: nn.Module, targets: dict[str, torch.Tensor], found: dict[str, tuple[int, ...]]) -> None:
    """Raise one CheckpointError listing missing, unexpected and wrongly shaped tensors."""
    groups: dict[int, list[str]] = {}  # tied names share one tensor object
    for name, tensor in targets.items():
        groups.setdefault(id(tensor), []).append(name)
    ignore_missing = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_missing", None) or ()]
    ignore_unexpected = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ()]
    missing = [names[0] for names in groups.values()
               if not any(n in found for n in names) and not any(p.search(names[0]) for p in ignore_missing)]
    unexpected = [n for n in found if n not in targets and not any(p.search(n) for p in ignore_unexpected)]
    mismatched = [f"{n}: model expects {tuple(targets[n].shape)}, checkpoint has {shape}"
                  for n, shape in found.items() if n in targets and tuple(targets[n].shape) != shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing from the checkpoint: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s) the model does not have: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es):\n    " + "\n    ".join(_head(mismatched)))
    if problems:
        err = CheckpointError(f"checkpoint does not match {type(model).__name__}:\n  " + "\n  ".join(problems)
                              + "\nIs config.json the one these weights were saved with?")
        err.missing, err.unexpected, err.mismatched = missing, unexpected, mismatched
        raise err


def _tensor_shapes(file: Path) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor in `file`, from the safetensors header alone when possible."""
    if file.suffix != ".safetensors":
        for name, tensor in _read_tensors(file):
            yield name, tuple(tensor.shape)
        return
    with _open_safetensors(file) as handle:
        for name in handle.keys():
            yield name, tuple(handle.get_slice(name).get_shape())


def _read_tensors(file: Path) -> Iterator[tuple[str, torch.Tensor]]:
    if file.suffix != ".safetensors":
        yield from _read_pickle(file).items()
        return
    with _open_safetensors(file) as handle:
        for name in handle.keys():
            try:
                yield name, handle.get_tensor(name)
            except Exception as err:  # SafetensorError is not importable under a stable name
                raise _corrupt(file, err) from err


@contextlib.contextmanager
def _open_safetensors(file: Path) -> Iterator[Any]:
    from safetensors import safe_open

    if not file.is_file():
        raise CheckpointError(f"weight file {file.name} is missing from {file.parent}")
    try:
        handle = safe_open(str(file), framework="pt", device="cpu")
    except Exception as err:
        raise _corrupt(file, err) from err
    with handle:
        yield handle


def _corrupt(file: Path, err: Exception) -> CheckpointError:
    return CheckpointError(
        f"cannot read {file.name} in {file.parent} ({file.stat().st_size} bytes): {err}. The file looks "
        f"truncated or corrupt (an interrupted download or copy?); fetch or save it again."
    )


def _read_pickle(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise CheckpointError(f"weight file {file.name} is missing from {file.parent}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"cannot read pickle checkpoint {file} with torch.load(weights_only=True): {err}. It is truncated, "
            f"corrupt, or holds objects other than tensors (kiln never unpickles arbitrary objects)."
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file} is not a state dict (a mapping of names to tensors)")
    return state


def _head(items: list[str]) -> list[str]:
    return items[:_MAX_LISTED] + ([f"... and {len(items) - _MAX_LISTED} more"] if len(items) > _MAX_LISTED else [])


def _listing(items: list[str]) -> str:
    return ", ".join(_head(items))
