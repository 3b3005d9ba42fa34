"""Every shipped YAML under experiments/<stage>/ parses against its stage's LightningCLI (``--print_config``).

A stage's entry module is the one ``arm.cli.STAGES`` registers for it, else ``arm.<stage>.cli``; either way it
must exist, so a YAML shipped before its stage fails here.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from arm.cli import STAGES

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "experiments").glob("*/*.yaml"))


def stage_module(stage: str) -> str:
    return STAGES[stage][0] if stage in STAGES else f"arm.{stage}.cli"


def test_there_are_configs():
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_parses(path, capsys):
    cli = importlib.import_module(stage_module(path.parent.name))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "model:" in capsys.readouterr().out


def test_arm_entry_point_routes_teacher_stage(capsys):
    from arm.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["teacher", "fit", "--config", str(ROOT / "experiments/teacher/tiny.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "tokenizer_path" in capsys.readouterr().out
