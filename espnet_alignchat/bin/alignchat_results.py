"""Collect every ``scores.json`` under an exp dir into a Markdown results table.

    python -m espnet_alignchat.bin.alignchat_results --exp_dir exp --output RESULTS.md

One row per ``<model dir>/<decode dir>/<test set>/scores.json`` (as ``alignchat_score`` writes
them), under an environment header, as ESPnet's ``show_asr_result.sh`` does for RESULTS.md.
Without ``--output`` the table is printed. A cell is empty where that score was not computed.
"""

import argparse
from pathlib import Path
from typing import List, Optional

from espnet_alignchat.cli import exit_on_user_error
from espnet_alignchat.results import results_table


def main(cmd: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exp_dir", type=Path, default=Path("exp"))
    parser.add_argument("--output", type=Path, default=None, help="default: print")
    args = parser.parse_args(cmd)
    with exit_on_user_error("alignchat_results"):
        if not args.exp_dir.is_dir():
            raise FileNotFoundError(f"{args.exp_dir}: no such directory")
        table = results_table(args.exp_dir)
    if args.output is None:
        print(table, end="")
    else:
        args.output.write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
