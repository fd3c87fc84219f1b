"""Writing an exported model: atomically, with weights as external data when needed.

Everything is written to temporary files in the output directory and renamed into place at the
end (data files first, the model last), so a failure leaves nothing behind. External data files
live only in the model's directory; each name is derived from the sanitized initializer name
(letters, digits, `_`, `-`, single `.`; no separators, no leading dot), never from a path the user gave.
"""

from __future__ import annotations

import os
import re
import tempfile

import onnx
from onnx import TensorProto

EXTERNAL_THRESHOLD = 2 * 1024**3 - (64 << 20)  # protobuf's 2 GiB limit, less room for the graph
MIN_EXTERNAL_BYTES = 1024  # smaller initializers stay inline


def sanitize(name: str, limit: int = 120) -> str:
    """A file-name-safe form of an initializer name (no path separators, no leading dot)."""
    s = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9_.-]", "_", name)).lstrip(".") or "tensor"
    return s[:limit]


def write_model(model: onnx.ModelProto, path: str, external_data: bool | None) -> None:
    path = os.path.abspath(path)
    out_dir = os.path.dirname(path)
    os.makedirs(out_dir, exist_ok=True)
    total = sum(len(t.raw_data) for t in model.graph.initializer)
    external = external_data if external_data is not None else total > EXTERNAL_THRESHOLD
    pending: list[tuple[str, str]] = []  # (temporary path, final path)
    try:
        if external:
            _externalize(model, out_dir, os.path.basename(path), pending)
        pending.append((_temp_write(out_dir, model.SerializeToString()), path))
        for tmp, final in pending:
            os.replace(tmp, final)
        pending.clear()
    finally:
        for tmp, _ in pending:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def _externalize(model: onnx.ModelProto, out_dir: str, model_name: str, pending: list) -> None:
    stem = sanitize(os.path.splitext(model_name)[0], 60)
    taken: set[str] = set()
    for t in model.graph.initializer:
        if len(t.raw_data) < MIN_EXTERNAL_BYTES:
            continue
        base = f"{stem}.{sanitize(t.name)}"
        fname, k = f"{base}.bin", 1
        while fname in taken:
            k += 1
            fname = f"{base}.{k}.bin"
        taken.add(fname)
        pending.append((_temp_write(out_dir, t.raw_data), os.path.join(out_dir, fname)))
        length = len(t.raw_data)
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", fname), ("offset", "0"), ("length", str(length))):
            e = t.external_data.add()
            e.key, e.value = key, value


def _temp_write(out_dir: str, data: bytes) -> str:
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".kiln-export-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp
