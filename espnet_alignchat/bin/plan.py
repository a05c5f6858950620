"""Plan a training run: parameters, memory per GPU and checkpoint sizes, without any weights.

The speech tokenizer is built on the ``meta`` device from the training config; the LLM is read
from its ``config.json`` alone (a hub id or a directory holding it: no weight, no tokenizer);
pretrained encoders are built from their config alone. Any training option can be overridden,
as for ``alignchat_train`` (e.g. ``--ngpu 8``, ``--batch_bins``, ``--encoder_conf``)::

    python -m espnet_alignchat.bin.plan \\
        --config conf/tuning/train_instruct_whisper_large_v3_frozen.yaml \\
        --llm meta-llama/Llama-3.1-8B-Instruct --ngpu 8 --utterance_seconds 20

The memory figures are estimates for one training step (see `espnet_alignchat.planning`).
"""

from typing import List, Optional

import torch

from espnet_alignchat.cli import exit_on_user_error
from espnet_alignchat.encoders import ConfigError, WaveformEncoder
from espnet_alignchat.planning import plan, report, workload
from espnet_alignchat.task import AlignChatTask, encoder_choices


def get_parser():
    parser = AlignChatTask.get_parser()
    parser.description = __doc__.split("\n")[0]
    group = parser.add_argument_group("Planning")
    group.add_argument(
        "--utterance_seconds",
        type=float,
        default=20.0,
        help="Duration of the planned utterances (the longest the data keeps)",
    )
    group.add_argument(
        "--tokens_per_second",
        type=float,
        default=3.5,
        help="LLM tokens per second of speech (read English: ~2.7 words/s)",
    )
    group.add_argument(
        "--response_tokens",
        type=int,
        default=128,
        help="Tokens of a self-generated answer (stage 2)",
    )
    group.add_argument(
        "--prompt_tokens",
        type=int,
        default=40,
        help="Tokens the chat template adds around the speech (stage 2)",
    )
    return parser


def main(cmd: Optional[List[str]] = None) -> None:
    parser = get_parser()
    args = parser.parse_args(cmd)
    if args.llm is None:
        parser.error("the following arguments are required: --llm")
    # Normalization layers hold no parameters, and global_mvn would read its statistics.
    args.normalize = None
    if issubclass(encoder_choices.get_class(args.encoder), WaveformEncoder):
        args.encoder_conf["load_pretrained"] = False  # its config.json is enough
    args.decoder_conf.pop("init_from_whisper", None)  # no weights: shapes are enough
    if args.model != "alignchat":
        parser.error(
            f"plan counts AlignChat's speech tokenizer, not model {args.model}"
        )
    with exit_on_user_error("plan"):
        try:
            with torch.device("meta"):
                model = AlignChatTask.build_model(args, read_llm=False)
            work = workload(
                args,
                args.utterance_seconds,
                args.tokens_per_second,
                args.response_tokens,
                args.prompt_tokens,
            )
            result = plan(model, args, work)
        except ConfigError as error:
            parser.error(str(error))
    config = args.config or "the default config"
    print(f"{config} with the LLM {args.llm} (config.json only)")
    print(report(result, args))


if __name__ == "__main__":
    main()
