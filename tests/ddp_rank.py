"""One rank of the DDP test (`test_distributed.py`), launched by torchrun.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_rank.py \\
        <report dir> <alignchat_train arguments...>

Trains through `alignchat_train` exactly as a torchrun or Slurm job would, keeping the model
ESPnet builds; afterwards writes ``<report dir>/rank<R>.pt`` with what this rank holds: its
tokenizer weights before and after training, the utterances its batches held and a checksum of
its own copy of the frozen LLM.
"""

import os
import sys
from pathlib import Path
from typing import Dict, List

import torch

from espnet_alignchat.bin import alignchat_train
from espnet_alignchat.model import AlignChatModel
from espnet_alignchat.task import AlignChatTask

built: List[AlignChatModel] = []
initial: List[Dict[str, torch.Tensor]] = []
seen: List[str] = []
build_model = AlignChatTask.build_model.__func__


def build_and_keep(cls, args) -> AlignChatModel:
    model = build_model(cls, args)
    built.append(model)
    initial.append({k: v.clone() for k, v in model.state_dict().items()})
    forward = model.forward

    def forward_and_note(*args, **kwargs):
        if model.training:  # training batches, not validation's
            seen.extend(kwargs.get("utt_id", []))
        return forward(*args, **kwargs)

    model.forward = forward_and_note
    return model


def main() -> None:
    report_dir, cmd = Path(sys.argv[1]), sys.argv[2:]
    AlignChatTask.build_model = classmethod(build_and_keep)
    alignchat_train.main(cmd)
    model = built[-1]
    llm_loaded = model.llm.is_loaded  # stage 2 loads the whole LLM in each process
    llm_parameters = list(model.llm.model.parameters())
    torch.save(
        {
            "initial": initial[-1],
            "trained": model.state_dict(),
            "utterances": seen,
            "llm_loaded": llm_loaded,
            "llm_checksum": sum(p.double().sum().item() for p in llm_parameters),
            "llm_trainable": any(p.requires_grad for p in llm_parameters),
            "llm_in_state_dict": any(
                p.data_ptr() == t.data_ptr()
                for p in llm_parameters
                for t in model.state_dict().values()
            ),
            "pid": os.getpid(),
        },
        report_dir / f"rank{os.environ['RANK']}.pt",
    )


if __name__ == "__main__":
    main()
