"""The kernel cache: generated Triton source in a private directory, named by content hash.

Triton compiles from real source files (it reads a kernel's source back), so kiln writes each
generated module to `<cache>/k_<sha256 prefix>.py` and imports it from there. The directory is
created 0700 and refused if another user owns it or others can write it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import stat
import sys
from types import ModuleType

from ... import debug

_LOADED: dict[str, ModuleType] = {}


def cache_dir() -> str:
    path = debug.CACHE_DIR or os.path.join(os.path.expanduser("~"), ".cache", "kiln", "kernels")
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(f"kernel cache {path} must be owned by you and not writable by others (chmod 700 it)")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def load_module(source: str) -> ModuleType:
    """Import generated source (kiln-made identifiers only) from the cache, once per content."""
    key = hashlib.sha256(source.encode()).hexdigest()[:24]
    mod = _LOADED.get(key)
    if mod is not None:
        return mod
    path = os.path.join(cache_dir(), f"k_{key}.py")
    if not os.path.exists(path) or open(path).read() != source:
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(source)
        os.replace(tmp, path)  # atomic: concurrent processes never see half a file
    name = f"kiln_kernel_{key}"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    _LOADED[key] = mod
    return mod
