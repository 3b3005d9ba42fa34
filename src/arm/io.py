"""Atomic file writes: a reader (or a crash) never sees a half-written checkpoint, export or results file."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """``obj`` as indented, key-sorted JSON, written atomically."""
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"
"""The export layout every stage shares: safetensors weights plus a JSON config beside them."""


def save_export(directory: str | os.PathLike, module, meta: dict, copies: dict[str, str] | None = None) -> str:
    """Write ``module``'s weights (safetensors), ``copies`` (name -> source file) and ``meta`` as config.json.

    The config is written last, so a folder with a config always has complete weights beside it.
    """
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    write_atomic(directory / WEIGHTS_FILE, save(state))
    for name, source in (copies or {}).items():
        write_atomic(directory / name, Path(source).read_bytes())
    write_atomic(directory / CONFIG_FILE, (json.dumps(meta, indent=2) + "\n").encode())
    return str(directory)


def read_export(directory: str | os.PathLike, what: str, create_command: str) -> tuple[dict, dict]:
    """(state dict, config) of an export folder; a missing file is a one-line error naming what creates it."""
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"no {what} at {str(directory)!r} (missing {name}); create it with "
                                    f"`{create_command}`")
    return load_file(directory / WEIGHTS_FILE, device="cpu"), json.loads((directory / CONFIG_FILE).read_text())
