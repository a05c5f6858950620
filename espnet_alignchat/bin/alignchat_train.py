"""Train AlignChat with ESPnet's trainer (both stages; the mode is in the config).

Stage 1, the speech tokenizer against the LLM's embedding matrix only::

    python -m espnet_alignchat.bin.alignchat_train --config conf/train_pretrain.yaml \\
        --llm meta-llama/Llama-3.1-8B-Instruct --output_dir exp/pretrain \\
        --train_data_path_and_name_and_type dump/raw/train/wav.scp,speech,sound \\
        --train_data_path_and_name_and_type dump/raw/train/text,text,text \\
        --valid_data_path_and_name_and_type dump/raw/dev/wav.scp,speech,sound \\
        --valid_data_path_and_name_and_type dump/raw/dev/text,text,text \\
        --train_shape_file exp/stats/train/speech_shape \\
        --valid_shape_file exp/stats/valid/speech_shape

Stage 2 adds ``--train_data_path_and_name_and_type dump/raw/train/response,response,text``
(the LLM's own answers), ``--config conf/train_instruct.yaml`` and
``--init_param exp/pretrain/valid.acc.ave.pth``. ``--collect_stats true`` writes the shape files
and feature statistics without reading the LLM's weights. All of ESPnet's trainer options work
(``--ngpu``, ``--resume``, ``--use_amp``, ``--accum_grad``, ...); ``--help`` lists them. Token
ids (``text_int`` data) made by another LLM's tokenizer than ``--llm``'s are refused before
training starts (``token_ids.json``, `espnet_alignchat.provenance`). ``--ngpu N`` on one node
trains with DDP, one process per GPU (`one_process_per_gpu`). ``sound`` data may be any
``wav.scp`` (paths, pipes, ark offsets; any sample rate, resampled to the model's; several
channels, downmixed). An utterance that cannot be loaded (an unreadable or cut file, NaN
samples, an empty transcript, a line that is not UTF-8, no line in one of the files) is
reported, listed in ``<output_dir>/skipped_{train,valid}`` and replaced in its batch by the
next one (`espnet_alignchat.dataset`); with ``--collect_stats true`` it is reported there and
left out of the shape files, so training never meets it. A second line for an id is listed
there too (the first is used). The run ends with their count.
"""

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

from espnet2.train.distributed_utils import get_world_size

from espnet_alignchat.cli import exit_on_user_error
from espnet_alignchat.dataset import read_skipped
from espnet_alignchat.llm import load_tokenizer
from espnet_alignchat.provenance import check_record
from espnet_alignchat.task import AlignChatTask

# What this module logs before ESPnet configures logging goes through a module logger: the
# root logger's implicit basicConfig (`logging.warning`) would make ESPnet's a no-op and
# leave its INFO lines out of train.log.
logger = logging.getLogger(__name__)


def get_parser():
    return AlignChatTask.get_parser()


def check_token_ids(args: argparse.Namespace) -> None:
    """Refuse token ids (``text_int`` data) that another LLM's tokenizer made."""
    entries = (args.train_data_path_and_name_and_type or []) + (
        args.valid_data_path_and_name_and_type or []
    )
    folders = {Path(path).parent for path, _, kind in entries if kind == "text_int"}
    if folders and args.llm and not args.collect_stats:
        tokenizer = load_tokenizer(args.llm, args.trust_remote_code)
        for folder in sorted(folders):
            check_record(folder, args.llm, tokenizer)


def one_process_per_gpu(args: argparse.Namespace, cmd: List[str]) -> List[str]:
    """`cmd` with ``--multiprocessing_distributed true`` where ESPnet would otherwise train
    on several GPUs with DataParallel, whose replicas would share one `FrozenLLM` object
    (and its device) and race on it: ``--ngpu N`` on one node means DDP, one process per GPU,
    as in ESPnet's recipes. A launcher's processes (torchrun, Slurm) are DDP already."""
    launched = (
        args.dist_launcher is not None or get_world_size(args.dist_world_size, None) > 1
    )
    if args.ngpu > 1 and not args.multiprocessing_distributed and not launched:
        logger.warning(
            f"--ngpu {args.ngpu}: training with one process per GPU (DDP, "
            "--multiprocessing_distributed true), not DataParallel"
        )
        return [*cmd, "--multiprocessing_distributed", "true"]
    return cmd


def report_skipped(output_dir: Path) -> None:
    """Say how many utterances could not be loaded and were skipped (`SkippingDataset`)."""
    for split in ("train", "valid"):
        report = output_dir / f"skipped_{split}"
        skipped = read_skipped(report)
        if skipped:
            logger.warning(
                f"{len(skipped)} {split} utterances (or their lines) were skipped: listed "
                f"with the reason in {report}"
            )


def main(cmd: Optional[List[str]] = None) -> None:
    cmd = list(sys.argv[1:] if cmd is None else cmd)
    with exit_on_user_error("alignchat_train"):
        args = get_parser().parse_args(cmd)
        check_token_ids(args)
        AlignChatTask.main(cmd=one_process_per_gpu(args, cmd))
        if args.output_dir is not None:
            report_skipped(Path(args.output_dir))


if __name__ == "__main__":
    main()
