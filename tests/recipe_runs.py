"""Running a copy of egs2/alignchat (conftest's `recipe` fixture) with a test's tiny configs."""

import os
import subprocess
from pathlib import Path
from typing import Dict


def run_recipe(
    recipe: Path, configs: Dict[str, Path], *options: str, timeout: int
) -> str:
    """`./run.sh` with two jobs per stage, the configs {pretrain, instruct, decode} under
    fixed tags, and `options`; asserts it succeeds and returns its stdout."""
    command = [
        "./run.sh",
        "--nj", "2",
        "--inference_nj", "2",
        "--pretrain_config", str(configs["pretrain"]),
        "--instruct_config", str(configs["instruct"]),
        "--inference_config", str(configs["decode"]),
        "--pretrain_tag", "pretrain",
        "--instruct_tag", "instruct",
        "--inference_tag", "decode",
        *options,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        command, cwd=recipe, capture_output=True, text=True, env=env, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout
