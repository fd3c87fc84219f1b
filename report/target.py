"""Resolve a MODEL spec into (model, args, kwargs): a built-in name, an HF checkpoint directory,
or `module:function` returning (model, example_inputs)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

import torch


def load_target(spec: str, batch: int = 2, seq: int = 32, seed: int = 0) -> tuple[Any, tuple, dict]:
    """(callable, args, kwargs) for `spec`. Built-in and HF models get random token ids
    (batch x seq, drawn from [1, vocab) so they are never all zero)."""
    if os.path.isdir(spec):
        from ..cli import _load

        model = _load(spec)
        return model, (), {"input_ids": _token_ids(model.config.vocab_size, batch, seq, seed)}
    if ":" in spec:
        return _from_function(spec)
    from ..models import get_model

    model = get_model(spec)
    return model, (_token_ids(model.cfg.vocab_size, batch, seq, seed),), {}


def _token_ids(vocab: int, batch: int, seq: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, max(vocab, 2), (batch, seq), generator=gen)


def _from_function(spec: str) -> tuple[Any, tuple, dict]:
    """`path/to/file.py:fn` or `package.module:fn`; fn() returns (model, tuple | dict)."""
    mod_name, _, fn_name = spec.rpartition(":")
    module = _import(mod_name)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ValueError(f"{mod_name!r} has no function {fn_name!r}")
    model, example = fn()
    if isinstance(example, dict):
        return model, (), dict(example)
    if isinstance(example, (tuple, list)):
        return model, tuple(example), {}
    raise TypeError(f"{spec} must return (model, example_inputs) with a tuple of args or a dict of kwargs, got {type(example).__name__}")


def _import(name: str) -> Any:
    if name.endswith(".py") or os.path.sep in name:
        path = os.path.abspath(name)
        mod = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(f"kiln_report_target_{mod}", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses and pickling look the module up by name
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(name)
