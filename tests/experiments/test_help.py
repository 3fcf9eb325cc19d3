"""`kvbench --help` and the README list every config group, option and top-level key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.experiments.test_cli import ROOT, kvbench

CONF = ROOT / "experiments" / "conf"
GROUPS = ["allocator", "workload", "sampling", "model", "backend", "backend/gpu", "experiment"]
GROUPS += ["sweep"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_help_lists_groups_options_and_commented_keys():
    r = kvbench("--help")
    assert r.returncode == 0 and "Traceback" not in r.stderr
    lines = r.stdout.splitlines()
    for group in GROUPS:
        start = lines.index(f"  {group}") + 1
        listed = []
        for line in lines[start:]:
            if not line.startswith("    "):
                break
            listed.append(line.split()[0])
        assert listed == options(group), group
    assert "basic" in r.stdout and "slurm" in r.stdout and "submitit_slurm" in r.stdout
    for line in (CONF / "config.yaml").read_text().splitlines():
        if line.startswith("# KV memory") or line.startswith("kv_budget_gib"):
            assert line in r.stdout


@pytest.mark.parametrize("group", GROUPS)
def test_readme_names_every_option(group):
    text = (Path(ROOT) / "README.md").read_text()
    for option in options(group):
        assert re.search(rf"\b{re.escape(option)}\b", text), f"{group}={option}"


def test_the_readme_mooncake_command_gives_the_quoted_hit_rate(tmp_path, need_trace):
    need_trace("mooncake_conv")
    text = (Path(ROOT) / "README.md").read_text()
    start = text.index(
        "kvbench workload=mooncake_conv allocator=prefix allocator.block_size=512 \\"
    )
    command = text[start:].split("#", 1)[0].replace("\\\n", " ").split()
    assert command[0] == "kvbench" and "max_seq_len=196608" in command
    r = kvbench(*command[1:], "progress=false", f"hydra.run.dir={tmp_path}")
    assert "0 clipped" in r.stdout and "36.6% of prompt block references" in r.stdout
    assert "warning" not in r.stderr
