"""Which tokenizer made the token ids of a data dir, so that ids are never read by another LLM.

``format_data`` (``text_int``, ``response_int``) and ``generate_responses`` (``response_int``)
write ``token_ids.json`` beside the ids: the LLM, its vocabulary size and the SHA-256 of its
vocabulary (every token with its id). Training and self-generation check it against their
LLM's tokenizer and refuse ids made by another one with one line: ids made for an LLM of equal
or larger vocabulary would otherwise train silently on the wrong tokens.
"""

import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

from transformers import PreTrainedTokenizerBase

from espnet_alignchat.atomic import atomic_write_text
from espnet_alignchat.llm import LLMMismatchError

RECORD = "token_ids.json"

# A module logger, not `logging.warning`: training checks the ids before ESPnet configures
# logging, and the root logger's implicit basicConfig would then leave ESPnet's INFO lines out.
logger = logging.getLogger(__name__)


def tokenizer_sha256(tokenizer: PreTrainedTokenizerBase) -> str:
    """SHA-256 of the vocabulary, token by id: equal hashes mean an id names the same token."""
    vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(
        json.dumps(vocabulary, ensure_ascii=False).encode()
    ).hexdigest()


def write_record(
    folder: Path, llm: str, tokenizer: PreTrainedTokenizerBase, files: Sequence[str]
) -> None:
    record = dict(
        llm=str(llm),
        vocabulary=len(tokenizer),
        tokenizer_sha256=tokenizer_sha256(tokenizer),
        files=list(files),
    )
    atomic_write_text(Path(folder) / RECORD, json.dumps(record, indent=2) + "\n")


def check_record(folder: Path, llm: str, tokenizer: PreTrainedTokenizerBase) -> None:
    """Raise `LLMMismatchError` when the ids in `folder` were made by another tokenizer; a
    folder without a record (ids made elsewhere) is logged and accepted."""
    path = Path(folder) / RECORD
    if not path.is_file():
        logger.warning(
            f"{folder}: no {RECORD}: which tokenizer made its token ids cannot be checked "
            "(format_data writes it)"
        )
        return
    try:
        record = json.loads(path.read_text())
        made_by, sha256 = record["llm"], record["tokenizer_sha256"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise LLMMismatchError(f"{path}: not a token-id record ({error})") from error
    if sha256 != tokenizer_sha256(tokenizer):
        raise LLMMismatchError(
            f"{folder}: its token ids were made by the tokenizer of {made_by} "
            f"(vocabulary sha256 {sha256[:12]}…), not by that of {llm}; rerun format_data "
            f"with --llm {llm}"
        )
