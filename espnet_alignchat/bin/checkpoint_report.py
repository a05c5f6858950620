"""Show that checkpoints hold the speech tokenizer only, never a weight of the frozen LLM.

    python -m espnet_alignchat.bin.checkpoint_report --llm exp/mini_llm \\
        exp/train_pretrain/valid.acc.ave.pth exp/train_instruct/valid.acc_response.ave.pth

Prints, per checkpoint, its size, tensors and values, and how many of its tensors equal a
tensor of the LLM's safetensors files; then the LLM's own totals. Only LLM tensors with the
shape of some checkpoint tensor are read, so a large LLM costs little more than its headers.
"""

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from safetensors import safe_open

from espnet_alignchat.cli import exit_on_user_error
from espnet_alignchat.errors import InputError
from espnet_alignchat.llm import weight_files

Shape = Tuple[int, ...]


def load_checkpoint(path: Path) -> Dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a state dict")
    return state


def llm_tensors_inside(
    state: Dict[str, torch.Tensor], files: List[Path]
) -> Tuple[int, int, int]:
    """(LLM tensors equal to a checkpoint tensor, LLM tensors, LLM values)."""
    by_shape: Dict[Shape, List[torch.Tensor]] = defaultdict(list)
    for tensor in state.values():
        by_shape[tuple(tensor.shape)].append(tensor.float())
    found = count = values = 0
    for path in files:
        with safe_open(str(path), framework="pt") as reader:
            for key in reader.keys():
                shape = tuple(reader.get_slice(key).get_shape())
                count += 1
                values += int(torch.Size(shape).numel())
                if shape in by_shape:
                    llm_tensor = reader.get_tensor(key).float()
                    found += any(torch.equal(llm_tensor, t) for t in by_shape[shape])
    return found, count, values


def report(checkpoints: List[Path], llm: str) -> List[str]:
    files = weight_files(llm)
    lines = [
        f"{'checkpoint':<50} {'MiB':>7} {'tensors':>8} {'values':>12} {'LLM tensors':>12}"
    ]
    llm_count = llm_values = 0
    for path in checkpoints:
        state = load_checkpoint(path)
        found, llm_count, llm_values = llm_tensors_inside(state, files)
        size = path.stat().st_size / 2**20
        values = sum(tensor.numel() for tensor in state.values())
        lines.append(
            f"{str(path):<50} {size:>7.1f} {len(state):>8} {values:>12,} {found:>12}"
        )
    llm_size = sum(path.stat().st_size for path in files) / 2**20
    lines.append(
        f"the LLM ({llm}): {llm_count} tensors, {llm_values:,} values, "
        f"{llm_size:.1f} MiB in {len(files)} safetensors file(s)"
    )
    return lines


def main(cmd: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", type=Path, nargs="+", help=".pth files")
    parser.add_argument("--llm", required=True, help="the LLM's local dir or hub id")
    args = parser.parse_args(cmd)
    with exit_on_user_error("checkpoint_report"):
        lines = report(args.checkpoints, args.llm)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
