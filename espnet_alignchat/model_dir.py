"""A trained model's directory: its ``config.yaml``, its checkpoint and the files they name.

ESPnet writes the paths of ``config.yaml`` as they were given to the training, relative to the
directory it ran in (the recipe dir: ``normalize_conf.stats_file: exp/stats/train/feats_stats.npz``,
``llm: exp/mini_llm``). The recipe dir is an ancestor of the model dir (``exp/<tag>``), so such a
path is looked up from the model dir upwards, then from the current directory: a model dir works
from any directory, as long as it stays in its recipe.

    >>> config = read_config(Path("exp/train_instruct"))
    >>> resolve_paths(config, Path("exp/train_instruct"))  # absolute paths where found
"""

from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import yaml

from espnet_alignchat.errors import InputError
from espnet_alignchat.task import AlignChatTask

# What ESPnet's n-best averaging leaves behind, best first, for the two training modes.
MODEL_FILES = (
    "valid.acc_response.ave.pth",
    "valid.acc.ave.pth",
    "valid.loss.ave.pth",
    "latest.pth",
)
# The config sections that build the model; only their options can name a file it needs.
MODEL_SECTIONS = tuple(
    f"{choices.name}_conf" for choices in AlignChatTask.class_choices_list
) + ("decoder_conf", "model_conf")


def find_model_file(model_dir: Path, model_file: Optional[str] = None) -> Path:
    """`model_file` inside `model_dir` (or as given), else the first of `MODEL_FILES` found."""
    if model_file is not None:
        path = Path(model_file)
        path = path if path.is_file() else model_dir / model_file
        if not path.is_file():
            raise FileNotFoundError(f"{model_dir}: no model file {model_file}")
        return path
    for name in MODEL_FILES:
        if (model_dir / name).is_file():
            return model_dir / name
    raise FileNotFoundError(f"{model_dir}: none of {', '.join(MODEL_FILES)}")


def read_config(model_dir: Path) -> Dict[str, Any]:
    path = model_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.yaml, so not a model dir")
    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict):
        raise InputError(f"{path}: not an ESPnet config (a YAML mapping)")
    return config


def resolve(value: str, model_dir: Path) -> Optional[Path]:
    """The existing path `value` names, looked up from `model_dir` upwards, then here."""
    path = Path(value)
    if path.is_absolute():
        return path if path.exists() else None
    model_dir = model_dir.resolve()
    for base in (model_dir, *model_dir.parents, Path.cwd()):
        if (base / path).exists():
            return base / path
    return None


def path_options(config: Dict[str, Any]) -> Iterator[Tuple[Dict[str, Any], str]]:
    """``(section, key)`` of every option of the model's sections that looks like a path."""

    def walk(section: Dict[str, Any]) -> Iterator[Tuple[Dict[str, Any], str]]:
        for key, value in section.items():
            if isinstance(value, dict):
                yield from walk(value)
            elif isinstance(value, str) and ("/" in value or Path(value).suffix):
                yield section, key

    for name in MODEL_SECTIONS:
        if isinstance(config.get(name), dict):
            yield from walk(config[name])


def resolve_paths(config: Dict[str, Any], model_dir: Path) -> None:
    """Make the model's path options that `resolve` finds absolute, in place."""
    for section, key in path_options(config):
        found = resolve(section[key], model_dir)
        if found is not None:
            section[key] = str(found)


def locate_llm(reference: str, model_dir: Path, where: str) -> str:
    """The LLM a config names: its local dir (found as `resolve` finds files) or a hub id.

    A reference that can only be a local path (absolute, ``./``, more than one ``/``) and is not
    on this machine is an error naming `where`, rather than a failed hub download.
    """
    local = resolve(reference, model_dir)
    if local is not None and local.is_dir():
        return str(local)
    if (
        Path(reference).is_absolute()
        or reference.startswith(".")
        or reference.count("/") > 1
    ):
        raise FileNotFoundError(
            f"{where}: its LLM {reference} is not on this machine; pass the same LLM "
            "(a local dir or hub id) with llm=... or --llm"
        )
    return reference
