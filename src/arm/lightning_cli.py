"""``ArmCLI``: the LightningCLI every ``arm <stage> fit`` runs, with one change to how a run resumes.

Lightning (``LightningCLI._parse_ckpt_path``, 2.6 here) replaces the model's configured options with the
hyperparameters stored in the checkpoint when ``--ckpt_path`` names a file, but not when it is ``last`` (which it
resolves later). So ``--ckpt_path run/last.ckpt --model.decoder_steps 1000`` trained with the checkpoint's
``decoder_steps`` and said nothing, while ``--ckpt_path last`` with the same option used it (found when a resumed
tokenizer run ignored a changed decoder phase; experiments/LOG.md, twenty-second session). Here the configured
options apply in both forms, and the options that differ from the checkpoint's are named on stderr, one line, so
that a deliberate change is visible and a load error from a changed architecture has its cause beside it.

Not changed by a resume in either form: the optimizer's state and the schedule's base rates, which Lightning
restores from the checkpoint, so a changed ``lr``, ``decoder_lr_scale``, ``betas`` or ``weight_decay`` does not
apply to a resumed run (a resumed run at ``decoder_lr_scale`` 2 matched the run at 1 to the last digit;
experiments/LOG.md, twenty-second session); the stderr line says so.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import LightningCLI


def _plain(value: Any) -> Any:
    """A configured or stored option as plain data (jsonargparse namespaces as dicts, tuples as lists)."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def changed_model_options(stored: dict[str, Any], configured: Any) -> dict[str, tuple[Any, Any]]:
    """``{option: (checkpoint's value, configured value)}`` for the stored hyperparameters the configuration sets
    differently (private keys such as Lightning's ``_instantiator`` ignored)."""
    now = _plain(configured) if configured is not None else {}
    return {key: (_plain(old), now[key]) for key, old in stored.items()
            if not key.startswith("_") and key in now and _plain(old) != now[key]}


class ArmCLI(LightningCLI):
    """LightningCLI whose resumed runs keep the configured model options (module docstring)."""

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        path = self.config[subcommand].get("ckpt_path")
        if not path or not Path(path).is_file():
            return
        # mmap: only the hyperparameters are read, not every tensor of a large checkpoint
        stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters") or {}
        changed = changed_model_options(stored, self.config[subcommand].get("model"))
        if changed:
            listed = "; ".join(f"model.{key}={new!r} (checkpoint: {old!r})" for key, (old, new) in changed.items())
            print(f"arm: resuming from {path} with the configured model options, which differ from the "
                  f"checkpoint's: {listed} (the optimizer's state and learning rates still come from the "
                  f"checkpoint)", file=sys.stderr)
