"""Run VoiceBench's own, unmodified ``main.py`` with AlignChat as its assistant.

    cd VoiceBench   # a clone of https://github.com/MatthewCYM/VoiceBench
    ALIGNCHAT_MODEL=/path/alignchat.zip python -m espnet_alignchat.bin.voicebench_main \\
        --model alignchat --data sd-qa --split usa --modality audio

VoiceBench's ``src/models/__init__.py`` imports all of its assistants up front, and with them
their dependencies (snac, openai, whisperspeech, deepspeed, onnxruntime, transformers 4.47,
...), so registering an assistant there fails unless every one of them is installed. This
entry point gives ``main.py`` a ``src.models`` that holds AlignChat alone
(``model_cls_mapping = {"alignchat": AlignChatAssistant}``) and then runs ``main.py`` as
VoiceBench's README says, with the arguments given here; VoiceBench's files are not changed.
``main.py`` itself needs ``datasets`` and ``loguru``. The model comes from the environment, as
VoiceBench builds assistants without arguments: ``ALIGNCHAT_MODEL``, ``ALIGNCHAT_LLM``,
``ALIGNCHAT_DEVICE`` (`espnet_alignchat.voicebench`). ``--voicebench_dir`` (default: the
current folder) says where VoiceBench is.
"""

import argparse
import runpy
import sys
import types
from pathlib import Path
from typing import List, Optional

from espnet_alignchat.voicebench import AlignChatAssistant

PROG = "voicebench_main"


def run_voicebench_main(voicebench_dir: Path, argv: List[str]) -> None:
    main_py = voicebench_dir / "main.py"
    if not (main_py.is_file() and (voicebench_dir / "src").is_dir()):
        sys.exit(
            f"{PROG}: error: {voicebench_dir}: no VoiceBench main.py and src/ there"
        )
    models = types.ModuleType("src.models")
    models.model_cls_mapping = {"alignchat": AlignChatAssistant}
    sys.modules["src.models"] = models
    sys.path.insert(0, str(voicebench_dir.resolve()))
    sys.argv = [str(main_py), *argv]
    try:
        runpy.run_path(str(main_py), run_name="__main__")
    except ModuleNotFoundError as error:
        if error.name is None or error.name.startswith(("espnet", "src")):
            raise
        sys.exit(
            f"{PROG}: error: VoiceBench's main.py imports {error.name}: install it"
        )


def main(cmd: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Every other argument goes to VoiceBench's main.py.",
    )
    parser.add_argument("--voicebench_dir", type=Path, default=Path("."))
    args, rest = parser.parse_known_args(cmd)
    run_voicebench_main(args.voicebench_dir, rest)


if __name__ == "__main__":
    main()
