"""The recipe's shell utilities: option parsing and the local/Slurm job launchers."""

import os
import stat
import subprocess
from pathlib import Path

import pytest

UTILS = Path(__file__).parent.parent / "egs2" / "alignchat" / "utils"


def bash(script: str, cwd: Path, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, capture_output=True, text=True, env=env
    )


def test_parse_options_sets_known_variables_only(tmp_path):
    script = f"""
        nj=1; llm=""; use_x=false
        set -- --nj 4 --llm=my/llm --use-x true rest
        . {UTILS}/parse_options.sh
        echo "$nj|$llm|$use_x|$*"
    """
    assert bash(script, tmp_path).stdout.strip() == "4|my/llm|true|rest"
    typo = bash(f"nj=1; set -- --njj 4; . {UTILS}/parse_options.sh", tmp_path)
    assert typo.returncode != 0 and "invalid option --njj" in typo.stderr
    boolean = bash(f"x=false; set -- --x yes; . {UTILS}/parse_options.sh", tmp_path)
    assert boolean.returncode != 0 and "takes true or false" in boolean.stderr


@pytest.mark.parametrize("launcher", ["run_local.sh", "run_slurm.sh"])
def test_job_arrays_substitute_job_and_report_failures(launcher, tmp_path):
    env = dict(os.environ)
    if launcher == "run_slurm.sh":
        # A stand-in sbatch that runs each task of the array here, as Slurm would.
        fake = tmp_path / "bin" / "sbatch"
        fake.parent.mkdir()
        fake.write_text(
            "#!/usr/bin/env bash\n"
            'for a in "$@"; do case "$a" in --array=*) r=${a#--array=};; esac; done\n'
            "script=${@: -1}; status=0\n"
            "for ((t=${r%-*}; t<=${r#*-}; t++)); do\n"
            '  SLURM_ARRAY_TASK_ID=$t bash "$script" || status=1\n'
            "done\nexit $status\n"
        )
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
        env["PATH"] = f"{fake.parent}:{env['PATH']}"
    run = UTILS / launcher
    ok = bash(f"{run} JOB=1:3 logs/job.JOB.log echo 'job JOB of a b'", tmp_path, env)
    assert ok.returncode == 0, ok.stderr
    for job in (1, 2, 3):
        log = (tmp_path / "logs" / f"job.{job}.log").read_text()
        assert f"job {job} of a b" in log and "code 0" in log

    bad = bash(f"{run} --gpu 0 JOB=1:2 logs/bad.JOB.log test JOB -eq 1", tmp_path, env)
    assert bad.returncode != 0
    assert "code 1" in (tmp_path / "logs" / "bad.2.log").read_text()
    assert "failed" in bad.stderr
