"""Running a copy of egs2/alignchat (conftest's `recipe` fixture) with a test's tiny configs."""

import os
import subprocess
from pathlib import Path
from typing import Dict

from espnet_alignchat.testing import recipe_command


def run_recipe(
    recipe: Path, configs: Dict[str, Path], *options: str, timeout: int
) -> str:
    """`./run.sh` with `testing.recipe_command`'s settings, the configs {pretrain, instruct,
    decode} and `options`; asserts it succeeds and returns its stdout."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        recipe_command(configs, *options),
        cwd=recipe,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout
