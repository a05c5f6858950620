"""One file to share a trained model: the speech tokenizer, never the LLM's weights.

    espnet-alignchat pack --model_dir exp/train_instruct --output alignchat.zip

    chat = Speech2Chat.from_pretrained("alignchat.zip", llm="meta-llama/Llama-3.1-8B-Instruct")

The zip holds ``config.yaml``, the checkpoint as ``model.pth``, the files the config's model
sections name (global_mvn's ``feats_stats.npz``) under ``files/``, and a model card
``README.md``. The config names the LLM by reference (a hub id, or the absolute path of a local
dir) with its fingerprint, so loading it elsewhere takes the same LLM, from wherever it is there
(``llm=``), and refuses another. The layout is that of ESPnet's packed models (a ``meta.yaml``
naming the config and the checkpoint), so ESPnet's own `unpack` extracts it and points the
config's paths at the extracted files.
"""

import logging
import tarfile
import tempfile
import zipfile
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import yaml
from espnet2.main_funcs.pack_funcs import unpack

from espnet_alignchat import __version__
from espnet_alignchat.errors import InputError
from espnet_alignchat.model_dir import (
    find_model_file,
    locate_llm,
    path_options,
    read_config,
    resolve,
)
from espnet_alignchat.results import results_table

CONFIG, CHECKPOINT, CARD = "config.yaml", "model.pth", "README.md"


def pack_model(
    model_dir: Path,
    output: Path,
    model_file: Optional[str] = None,
    llm: Optional[str] = None,
    results: Optional[Path] = None,
) -> List[str]:
    """Write `output` (a .zip) from `model_dir`; returns the names it holds.

    `llm` replaces the LLM reference of the config (e.g. the hub id of a local copy); `results`
    is a RESULTS.md for the model card, which otherwise takes the model dir's RESULTS.md or its
    ``scores.json`` files.
    """
    model_dir, output = Path(model_dir), Path(output)
    if output.suffix != ".zip":
        raise InputError(f"{output}: a packed model is a .zip file")
    checkpoint = find_model_file(model_dir, model_file)
    config = read_config(model_dir)
    config["llm"] = llm or locate_llm(config["llm"], model_dir, str(model_dir))
    carried = carry_files(config, model_dir)
    meta = {
        "files": {"model_file": CHECKPOINT},
        "yaml_files": {"train_config": CONFIG},
        "espnet_alignchat": __version__,
        "torch": str(torch.__version__),
        "timestamp": datetime.now().timestamp(),
    }
    card = model_card(model_dir, checkpoint, config, output.name, results)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".part")  # no half-written model.zip
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("meta.yaml", yaml.safe_dump(meta))
        archive.writestr(CONFIG, yaml.safe_dump(config, indent=4, sort_keys=False))
        archive.write(checkpoint, CHECKPOINT)
        for name, source in carried.items():
            archive.write(source, name)
        archive.writestr(CARD, card)
        names = archive.namelist()
    partial.replace(output)
    return names


def carry_files(config: Dict[str, Any], model_dir: Path) -> Dict[str, Path]:
    """Point the config's file options at ``files/<name>``; returns name → source file.

    Directories are not carried: their options get the absolute path instead.
    """
    carried: Dict[str, Path] = {}
    for section, key in path_options(config):
        source = resolve(section[key], model_dir)
        if source is None:
            continue
        if (
            source.is_dir()
        ):  # e.g. a pretrained encoder's files: referenced, like the LLM
            logging.warning(
                f"{key}: the directory {source} is not packed; the model needs it at "
                "that path wherever it is loaded"
            )
            section[key] = str(source)
            continue
        names = {path: name for name, path in carried.items()}
        name = names.get(source, f"files/{source.name}")
        if carried.get(name, source) != source:  # two files of the same name
            name = f"files/{len(carried)}_{source.name}"
        carried[name] = source
        section[key] = name
    return carried


def check_members(path: Path) -> None:
    """Refuse an archive with a member that would land outside the folder it is unpacked
    into (an absolute path, a ``..`` step, a drive letter) or that is not a plain file or
    folder (a tar link or device): ESPnet's ``unpack`` writes members where they say."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = [(info.filename, False) for info in archive.infolist()]
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as archive:
            members = [(m.name, not (m.isfile() or m.isdir())) for m in archive]
    else:
        return  # not an archive: unpack says so
    for name, special in members:
        posix = name.replace("\\", "/")
        if posix.startswith("/") or ".." in PurePosixPath(posix).parts or ":" in posix:
            raise InputError(f"{path}: refused: the member {name!r} points outside it")
        if special:
            raise InputError(
                f"{path}: refused: the member {name!r} is a link or device"
            )


@contextmanager
def unpacked(path: Path) -> Iterator[Tuple[Path, Path]]:
    """``(model_dir, model_file)`` of the packed model, extracted while the context lasts.

    Archives whose members would escape the folder are refused (`check_members`)."""
    check_members(path)
    with tempfile.TemporaryDirectory(prefix="alignchat_") as tmp:
        try:
            files = unpack(path, tmp, use_cache=False)
            config, checkpoint = Path(files["train_config"]), Path(files["model_file"])
        except (RuntimeError, ValueError, KeyError, zipfile.BadZipFile) as error:
            raise InputError(
                f"{path}: not a model written by espnet-alignchat pack ({error})"
            ) from error
        yield config.parent, checkpoint


def _count_lines(path: Path) -> Optional[int]:
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def _data_lines(config: Dict[str, Any], model_dir: Path, split: str) -> List[str]:
    lines = []
    for path, name, kind in config.get(f"{split}_data_path_and_name_and_type") or []:
        found = resolve(path, model_dir)
        count = _count_lines(found) if found is not None else None
        entries = f", {count} entries" if count is not None else ""
        lines.append(f"- {split}: `{path}` ({name}, {kind}{entries})")
    return lines


def _demote(markdown: str) -> str:
    """Headings one level down, to sit under the card's own."""
    return "\n".join("#" + l if l.startswith("#") else l for l in markdown.splitlines())


def _results(model_dir: Path, results: Optional[Path]) -> str:
    """RESULTS.md, else a table of the model dir's scores.json files."""
    path = results or model_dir / "RESULTS.md"
    if path.is_file():
        return _demote(path.read_text(encoding="utf-8"))
    if any(model_dir.rglob("scores.json")):
        return _demote(results_table(model_dir))
    return f"No RESULTS.md or scores.json in `{model_dir}` when it was packed."


# What the card calls each model type (the task's `model` choice), and what it does.
MODEL_KINDS = {
    "alignchat": (
        "AlignChat speech tokenizer",
        "this speech tokenizer turns speech into one vector per LLM token, which the LLM "
        "reads where the words would go.",
    ),
    "frame_adapter": (
        "frame-rate adapter",
        "this frame-rate adapter (the baseline AlignChat is measured against) turns each "
        "group of encoder frames into one vector, which the LLM reads where the words "
        "would go; it writes no transcript.",
    ),
}


def model_card(
    model_dir: Path,
    checkpoint: Path,
    config: Dict[str, Any],
    file_name: str,
    results: Optional[Path] = None,
) -> str:
    """A README for `file_name`: how to use it, its LLM, model, training data, scores."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    values = sum(tensor.numel() for tensor in state.values())
    fingerprint = config.get("llm_fingerprint") or {}
    model_conf = config.get("model_conf") or {}
    model = config.get("model") or "alignchat"  # configs from before the model choice
    kind, what = MODEL_KINDS[model]
    parts = f"encoder: `{config.get('encoder_conf')}`"
    if model == "alignchat":
        parts += f"\n- decoder: `{config.get('decoder_conf')}`"
    lines = [
        f"# {kind} `{file_name}`",
        "",
        f"End-to-end speech-to-text chat for a frozen LLM (espnet-alignchat): {what}",
        "",
        "## Use",
        "",
        "```python",
        "from espnet_alignchat.inference import Speech2Chat",
        "",
        f'chat = Speech2Chat.from_pretrained("{file_name}", llm="{config["llm"]}")',
        'print(chat("question.wav"))',
        "```",
        "",
        "```bash",
        f'espnet-alignchat chat --model {file_name} --llm "{config["llm"]}" '
        "--wav question.wav",
        "```",
        "",
        "## LLM (frozen, not in this file)",
        "",
        f"- reference: `{config['llm']}` (`llm=` / `--llm` loads it from elsewhere)",
        f"- trained as: `{fingerprint.get('name_or_path')}`",
        f"- vocabulary {fingerprint.get('vocab_size')}, hidden size "
        f"{fingerprint.get('hidden_size')}, embedding SHA-256 "
        f"`{fingerprint.get('embedding_sha256')}`: another LLM is refused",
        f"- system prompt: {config.get('system_prompt')!r}; user turn: "
        f"{config.get('user_template')!r}",
        "",
        "## Model",
        "",
        f"- checkpoint `{checkpoint.name}` from `{model_dir}`: {values:,} values",
        f"- model {model}, training mode: {model_conf.get('mode')}; frontend "
        f"{config.get('frontend')}, normalize {config.get('normalize')}, encoder "
        f"{config.get('encoder')}",
        f"- {parts}",
        "",
        "## Training data",
        "",
        *_data_lines(config, model_dir, "train"),
        *_data_lines(config, model_dir, "valid"),
        f"- epochs: {config.get('max_epoch')}, optimizer {config.get('optim')} "
        f"`{config.get('optim_conf')}`, initialised from {config.get('init_param') or 'scratch'}",
        "",
        "## Results",
        "",
        _results(model_dir, results),
        "",
    ]
    return "\n".join(lines)
