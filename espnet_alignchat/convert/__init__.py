"""Models shipped in other formats, converted once into plain Hugging Face directories.

``gguf``: a llama.cpp GGUF causal LM (`convert_gguf_llm`); ``ctranslate2-whisper``: a
faster-whisper (CTranslate2) Whisper model directory (`convert_ct2_whisper`). The rest of the
package then loads them as it loads any other model directory.
"""

import logging
from pathlib import Path
from typing import Callable, Dict, List, Tuple

from espnet_alignchat.convert import ct2_whisper, gguf_llm
from espnet_alignchat.convert.ct2_whisper import convert_ct2_whisper, read_ct2_model
from espnet_alignchat.convert.gguf_llm import convert_gguf_llm
from espnet_alignchat.convert.staging import ConversionError, read_record, sha256_of

Converter = Callable[[Path, Path], Path]
FORMATS: Dict[str, Tuple[Converter, Callable[[Path], List[Path]]]] = {
    gguf_llm.FORMAT: (convert_gguf_llm, gguf_llm.source_files),
    ct2_whisper.FORMAT: (convert_ct2_whisper, ct2_whisper.source_files),
}

__all__ = [
    "ConversionError",
    "FORMATS",
    "convert_ct2_whisper",
    "convert_gguf_llm",
    "convert_model",
    "read_ct2_model",
]


def convert_model(fmt: str, src: Path, out_dir: Path) -> bool:
    """Convert `src` into `out_dir` unless `out_dir` already holds that conversion.

    Returns whether it converted. An `out_dir` holding the conversion of another source is an
    error rather than a silent reuse; when the source is gone, a complete `out_dir` is kept.
    """
    convert, sources = FORMATS[fmt]
    src, out_dir = Path(src), Path(out_dir)
    record = read_record(out_dir)
    if record is None:
        convert(src, out_dir)
        return True
    files = sources(src)
    if record.get("format") == fmt and not all(path.is_file() for path in files):
        logging.info(f"{out_dir} holds a complete conversion and {src} is gone: kept")
        return False
    if record.get("format") != fmt or record.get("source_sha256") != sha256_of(files):
        raise ConversionError(
            f"{out_dir}: holds the {record.get('format')} conversion of "
            f"{record.get('source')}, not of {src}; remove it or choose another out_dir"
        )
    logging.info(f"{out_dir} already holds the conversion of {src}: skipped")
    return False
