"""A GGUF causal LM (llama.cpp's format) as a plain Hugging Face model directory.

transformers reads GGUF files itself (with the ``gguf`` package) and dequantizes them, but only
into memory, and every load takes the dequantization again. Our code wants what every other LLM
has: ``config.json``, ``model.safetensors`` (from which stage 1 reads the embedding matrix alone,
see `espnet_alignchat.llm.load_embeddings`), ``generation_config.json`` and the tokenizer with its
chat template. The weights are written in float32, the dtype transformers dequantizes to, so the
converted model answers exactly as the GGUF-loaded one.
"""

import json
import logging
import time
from pathlib import Path
from typing import List

from espnet_alignchat.convert.staging import (
    ConversionError,
    check_free,
    sha256_of,
    staged_dir,
)

FORMAT = "gguf"
GGUF_MAGIC = b"GGUF"


def source_files(gguf_file: Path) -> List[Path]:
    """The files a conversion reads (their digest identifies the conversion)."""
    return [Path(gguf_file)]


def gguf_architecture(gguf_file: Path) -> str:
    """The file's ``general.architecture``; `ConversionError` if it is no readable GGUF."""
    from gguf import GGUFReader

    gguf_file = Path(gguf_file)
    with open(gguf_file, "rb") as stream:  # FileNotFoundError names the file
        magic = stream.read(4)
    if magic != GGUF_MAGIC:
        raise ConversionError(
            f"{gguf_file}: not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})"
        )
    try:
        return str(GGUFReader(gguf_file).fields["general.architecture"].contents())
    except KeyError:
        raise ConversionError(f"{gguf_file}: no general.architecture in its metadata")
    except Exception as error:  # the reader fails in many ways on a damaged file
        raise ConversionError(
            f"{gguf_file}: unreadable GGUF file, truncated or damaged? "
            f"({type(error).__name__}: {error})"
        )


def convert_gguf_llm(gguf_file: Path, out_dir: Path) -> Path:
    """Write the GGUF model `gguf_file` as a Hugging Face directory `out_dir`; return it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from espnet_alignchat.llm import load_embeddings

    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    architecture = gguf_architecture(gguf_file)
    check_free(out_dir)
    start = time.time()
    logging.info(f"Dequantizing {gguf_file} ({architecture})")
    where = dict(
        pretrained_model_name_or_path=gguf_file.parent, gguf_file=gguf_file.name
    )
    try:
        model = AutoModelForCausalLM.from_pretrained(**where)
        tokenizer = AutoTokenizer.from_pretrained(**where)
    except (ValueError, KeyError) as error:  # e.g. an architecture it does not read
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ConversionError(
            f"{gguf_file}: transformers cannot load this {architecture} GGUF: {message}"
        )
    # The weights are plain float32 tensors now; the GGUF quantizer only stands in the way
    # of save_pretrained, and a quantization_config would make the saved directory look
    # quantized to whoever loads it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # transformers puts GGUF's general.name there; it names neither a path nor a hub id.
    model.config.__dict__.pop("_model_name_or_path", None)
    context = getattr(model.config, "max_position_embeddings", None)
    tokenizer.model_max_length = context or tokenizer.model_max_length
    record = {
        "format": FORMAT,
        "source": str(gguf_file.resolve()),
        "source_sha256": sha256_of(source_files(gguf_file)),
        "architecture": architecture,
    }
    with staged_dir(out_dir, record) as partial:
        model.save_pretrained(partial)  # tied embeddings are saved once
        tokenizer.save_pretrained(partial)
        _portable_tokenizer_class(partial)
        _check(partial, tokenizer, gguf_file)
        load_embeddings(str(partial))  # the one tensor stage 1 reads is found by name
    logging.info(f"Wrote {out_dir} in {time.time() - start:.0f} s")
    return out_dir


def _portable_tokenizer_class(model_dir: Path) -> None:
    """Name the tokenizer class as transformers 4 knows it (5 reads both names)."""
    path = model_dir / "tokenizer_config.json"
    config = json.loads(path.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _check(model_dir: Path, tokenizer, gguf_file: Path) -> None:
    """The saved tokenizer must be the GGUF one: same chat template and special tokens."""
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(model_dir)
    for name in ("chat_template", "eos_token", "pad_token", "bos_token"):
        if getattr(saved, name) != getattr(tokenizer, name):
            raise ConversionError(
                f"{gguf_file}: the converted tokenizer's {name} differs from the GGUF one's"
            )
    if saved.chat_template is None:
        logging.warning(f"{gguf_file} has no chat template (tokenizer.chat_template)")
