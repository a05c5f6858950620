"""Run a frozen pretrained encoder once over a data dir and store its outputs for training.

    python -m espnet_alignchat.bin.dump_encoder_outputs \\
        --config conf/tuning/train_pretrain_whisper_tiny_frozen.yaml \\
        --data_dir dump/raw/train --output_dir dump/raw/train/encoder_out [--key_file keys.scp]

A wholly frozen encoder (``freeze: all``) gives the same frames for an utterance in every epoch
of both training stages, so computing them once saves most of a training step's cost on a small
decoder. This builds the config's encoder alone (its pretrained weights, no LLM), and writes

- ``<output_dir>/data/<uttid>.npy``: the encoder's frames (frames, hidden), before the adapter,
  in ``--dtype`` (float16 halves the disk space; training reads them as float32);
- ``<output_dir>/encoder_out.scp``: ``uttid /abs/path.npy`` for ESPnet's ``npy`` data type, so
  training reads ``--train_data_path_and_name_and_type <output_dir>/encoder_out.scp,speech,npy``
  with ``--input_size <hidden size>``;
- ``<output_dir>/encoder.yaml``: the encoder's config and hidden size (which encoder made
  them, and the ``--input_size`` to train with);
- ``<output_dir>/skipped``: ``uttid reason`` for each utterance whose audio cannot be used.

Resumable: an utterance whose file exists is not computed again (files are written whole).
"""

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import yaml
from tqdm import tqdm

from espnet_alignchat.bin.alignchat_inference import batches, select_keys
from espnet_alignchat.cli import exit_on_user_error, setup_logging
from espnet_alignchat.datadir import DataDir, write_kaldi_map
from espnet_alignchat.encoders import ConfigError, WaveformEncoder
from espnet_alignchat.errors import InputError
from espnet_alignchat.skips import SkipList
from espnet_alignchat.task import encoder_choices

PROG = "dump_encoder_outputs"
DTYPES = {"float16": np.float16, "float32": np.float32}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--config", type=Path, required=True, help="a training config (its encoder)"
    )
    parser.add_argument("--data_dir", type=Path, required=True)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--key_file", type=Path, default=None, help="utterances to do")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--dtype", choices=list(DTYPES), default="float16")
    parser.add_argument("--ngpu", type=int, default=0, help="0: CPU, 1: one GPU")
    parser.add_argument("--log_level", default="INFO")
    return parser


def read_encoder_config(config_file: Path) -> Dict[str, object]:
    """The ``encoder`` and ``encoder_conf`` of a training config."""
    with open(config_file, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict):
        raise InputError(f"{config_file}: not a training config (a YAML mapping)")
    return {
        "encoder": config.get("encoder"),
        "encoder_conf": config.get("encoder_conf") or {},
    }


def build_frozen_encoder(config_file: Path) -> WaveformEncoder:
    """The config's encoder with its pretrained weights; it must be a frozen waveform encoder."""
    config = read_encoder_config(config_file)
    name = config["encoder"]
    encoder_class = encoder_choices.get_class(name)
    if not issubclass(encoder_class, WaveformEncoder):
        raise ConfigError(
            f"{config_file}: encoder {name} is not a pretrained waveform encoder"
        )
    encoder = encoder_class(**config["encoder_conf"])
    if encoder.freeze != "all":
        raise ConfigError(
            f"{config_file}: the encoder trains (freeze: {encoder.freeze}), so its outputs "
            "change during training and cannot be cached; set freeze: all"
        )
    return encoder.eval()


def output_path(output_dir: Path, utt_id: str) -> Path:
    return output_dir / "data" / f"{utt_id}.npy"


def save_atomically(path: Path, array: np.ndarray) -> None:
    """A killed run never leaves a partial file under the final name."""
    partial = path.with_suffix(".partial.npy")
    np.save(partial, array)
    os.replace(partial, path)


def dump(args: argparse.Namespace) -> int:
    device = torch.device("cuda" if args.ngpu > 0 else "cpu")
    encoder = build_frozen_encoder(args.config).to(device)
    data = DataDir(args.data_dir)
    skips = SkipList()
    skips.add_all({**data.repeated, **data.left_out})  # lines of wav.scp or segments
    keys = select_keys(data, args.key_file, skips)
    output_dir = args.output_dir.absolute()
    (output_dir / "data").mkdir(parents=True, exist_ok=True)
    todo = [key for key in keys if not output_path(output_dir, key).is_file()]
    lengths = data.num_samples()
    if lengths is not None:  # similar lengths in a batch: less padding
        todo.sort(key=lambda key: -lengths.get(key, 0))
    logging.info(f"{len(keys) - len(todo)} outputs already written, {len(todo)} to do")

    dtype = DTYPES[args.dtype]
    with tqdm(total=len(todo), unit="utt", desc="encoder outputs") as progress:
        for batch in batches(todo, args.batch_size):
            loaded = []
            for key, speech, problem in data.iter_speech(batch, encoder.sample_rate):
                if problem is None:
                    loaded.append((key, torch.from_numpy(speech)))
                else:
                    skips.add_message(key, problem)
            if loaded:
                speech = torch.nn.utils.rnn.pad_sequence([s for _, s in loaded], True)
                samples = torch.tensor([len(s) for _, s in loaded])
                frames, frame_lengths = encoder.frozen_outputs(
                    speech.to(device), samples.to(device)
                )
                for (key, _), row, length in zip(loaded, frames, frame_lengths):
                    array = row[: int(length)].float().cpu().numpy().astype(dtype)
                    save_atomically(output_path(output_dir, key), array)
            progress.update(len(batch))

    written = {
        key: str(output_path(output_dir, key))
        for key in keys
        if output_path(output_dir, key).is_file()
    }
    write_kaldi_map(output_dir / "encoder_out.scp", written)
    skips.write(output_dir / "skipped")
    with open(output_dir / "encoder.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump(
            {**read_encoder_config(args.config), "hidden_size": encoder.hidden_size}, f
        )
    logging.info(
        f"{len(written)} utterances in {output_dir / 'encoder_out.scp'}"
        + skips.summary(output_dir / "skipped")
    )
    return 0 if written or not (keys or skips) else 1


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    setup_logging(args.log_level)
    with exit_on_user_error(PROG):
        status = dump(args)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
