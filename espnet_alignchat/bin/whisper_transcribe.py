"""Transcribe a Kaldi data dir with a Whisper model: the ASR half of the cascade baseline.

    python -m espnet_alignchat.bin.whisper_transcribe --model downloads/whisper-tiny.en \\
        --data_dir dump/raw/test --output_dir exp/instruct/decode/test/cascade_whisper/data

writes ``<output_dir>/text``, Whisper's greedy transcript of each utterance as Whisper writes it
(cased and punctuated): the recipe gives it to the same LLM as text (``alignchat_inference
--text_input true``), the cascade baseline. Unreadable utterances are reported, listed in
``<output_dir>/skipped`` and left out. ``--model`` is any Hugging Face Whisper directory (e.g.
the one ``convert_model --format ctranslate2-whisper`` writes) or hub id.
"""

import argparse
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch
from tqdm import tqdm
from transformers import AutoProcessor, WhisperForConditionalGeneration

from espnet_alignchat.bin.alignchat_inference import batches, select_keys
from espnet_alignchat.cli import exit_on_user_error, setup_logging
from espnet_alignchat.datadir import DataDir, write_kaldi_map
from espnet_alignchat.skips import SkipList

PROG = "whisper_transcribe"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="Whisper dir or hub id")
    parser.add_argument("--data_dir", type=Path, required=True)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--key_file", type=Path, default=None, help="utterances to do")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_beams", type=int, default=1, help="1: greedy")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--ngpu", type=int, default=0, help="0: CPU, 1: one GPU")
    parser.add_argument("--log_level", default="INFO")
    return parser


class WhisperASR:
    """A Whisper model and its processor; `__call__` transcribes a batch of 16 kHz waveforms."""

    sample_rate = 16000

    def __init__(self, model: str, device: str = "cpu", num_beams: int = 1):
        self.processor = AutoProcessor.from_pretrained(model)
        self.model = WhisperForConditionalGeneration.from_pretrained(model).to(device)
        self.model.eval()
        self.device = device
        self.num_beams = num_beams

    @torch.no_grad()
    def __call__(self, waveforms: List, max_new_tokens: int = 128) -> List[str]:
        # Whisper's own input: log-mels of 30-s windows, as it was trained.
        features = self.processor.feature_extractor(
            waveforms, sampling_rate=self.sample_rate, return_tensors="pt"
        ).input_features.to(self.device)
        ids = self.model.generate(
            features, num_beams=self.num_beams, max_new_tokens=max_new_tokens
        )
        texts = self.processor.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [" ".join(text.split()) for text in texts]


def transcribe(args: argparse.Namespace) -> int:
    asr = WhisperASR(args.model, "cuda" if args.ngpu > 0 else "cpu", args.num_beams)
    data = DataDir(args.data_dir)
    skips = SkipList()
    skips.add_all({**data.repeated, **data.left_out})  # lines of wav.scp or segments
    keys = select_keys(data, args.key_file, skips)
    lengths = data.num_samples()
    if lengths is not None:  # similar lengths in a batch
        keys = sorted(keys, key=lambda key: -lengths.get(key, 0))
    texts: Dict[str, str] = {}
    with tqdm(total=len(keys), unit="utt", desc="whisper") as progress:
        for batch in batches(keys, args.batch_size):
            loaded = []
            for key, speech, problem in data.iter_speech(batch, asr.sample_rate):
                if problem is None:
                    loaded.append((key, speech))
                else:
                    skips.add_message(key, problem)
            if loaded:
                hypotheses = asr([speech for _, speech in loaded], args.max_new_tokens)
                texts.update(zip([key for key, _ in loaded], hypotheses))
            progress.update(len(batch))

    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_kaldi_map(args.output_dir / "text", texts)
    skips.write(args.output_dir / "skipped")
    logging.info(
        f"{len(texts)} utterances transcribed into {args.output_dir}/text"
        + skips.summary(args.output_dir / "skipped")
    )
    return 0 if texts or not (keys or skips) else 1


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    setup_logging(args.log_level)
    with exit_on_user_error(PROG):
        status = transcribe(args)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
