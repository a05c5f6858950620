"""Time to the first answer token in the demo page: a spoken question versus the same typed.

    cd egs2/alignchat && python ../../benchmarks/demo_first_token.py \\
        --model exp/train_instruct_real --data_dir dump/raw/test_real --num_utts 5 \\
        --screenshot images/demo.png

serves the demo (`espnet_alignchat.demo`) with the model, decoded as ``conf/decode_real.yaml``
decodes it (``--output_mode snap``, answers of up to 32 tokens), and drives it in headless
Chromium (`espnet_alignchat.demo_browser`). For each of the first `num_utts` utterances of
the data dir, `repeats` times, each question on a page just reset:

- uploaded: from choosing the audio file to the first token of the answer on screen;
- recorded: from stopping a recording of the fake microphone, which plays the utterance in a
  loop, made as long as the utterance plus `record_margin`, to the first token on screen;
- typed: the utterance's reference text (``text``), from pressing Enter to the first token.

The speech times include what the typed one does not: the audio's way to the server and the
speech tokenizer. Printed: a Markdown table, one row per utterance (medians over the
repeats), and the medians over all rows with the ratios to typed. ``--screenshot`` saves the
page after it answered one of them (``--screenshot_utt``, default the first), uploaded.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import soundfile
import torch

from espnet_alignchat.datadir import read_audio, read_kaldi_map
from espnet_alignchat.demo import build_demo, serve_in_background
from espnet_alignchat.demo_browser import DemoPage
from espnet_alignchat.inference import Speech2Chat

MODES = ("uploaded", "recorded", "typed")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model dir or packed file")
    parser.add_argument("--llm", default=None, help="the model's LLM, if elsewhere")
    parser.add_argument("--output_mode", default="snap")
    parser.add_argument("--data_dir", type=Path, required=True, help="wav.scp and text")
    parser.add_argument("--num_utts", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--record_margin", type=float, default=0.3, help="seconds")
    parser.add_argument("--threads", type=int, default=1, help="torch's CPU threads")
    parser.add_argument("--screenshot", type=Path, default=None, help="a .png")
    parser.add_argument(
        "--screenshot_utt", default=None, help="the utterance it shows (default: first)"
    )
    return parser


def first_token(
    page: DemoPage, mode: str, wav: Path, text: str, margin: float
) -> float:
    """Seconds to the first token of the answer to one question, on a reset page."""
    page.reset()
    if mode == "uploaded":
        seconds = page.first_token_seconds(lambda: page.upload(wav))
    elif mode == "recorded":
        page.start_recording()
        time.sleep(soundfile.info(wav).duration + margin)
        seconds = page.first_token_seconds(page.stop_recording)
    else:
        page.type(text, enter=False)
        seconds = page.first_token_seconds(page.press_enter)
    page.wait_until_answered(1, timeout=300)
    return seconds


def main() -> None:
    args = get_parser().parse_args()
    torch.set_num_threads(args.threads)
    chat = Speech2Chat.from_pretrained(
        args.model, llm=args.llm, device="cpu", output_mode=args.output_mode
    )
    chat.llm.model  # loaded before the first question
    url = serve_in_background(build_demo(chat, max_new_tokens=args.max_new_tokens))
    wavs, texts = (read_kaldi_map(args.data_dir / name) for name in ("wav.scp", "text"))
    print(
        "| utterance | audio s | said | heard (uploaded) | heard (recorded) | "
        + " | ".join(f"{mode} s" for mode in MODES)
        + " |"
    )
    print("|---|---|---|---|---|" + "---|" * len(MODES))
    medians: Dict[str, List[float]] = {mode: [] for mode in MODES}
    keys = list(wavs)[: args.num_utts]
    first = keys[0]
    with tempfile.TemporaryDirectory() as folder:
        for key in keys:
            samples, rate = read_audio(wavs[key])
            wav = Path(folder) / f"{key}.wav"  # what the fake microphone plays
            soundfile.write(wav, samples, rate)
            heard = {}
            with DemoPage(url, microphone=wav) as page:
                page.open()
                for mode in MODES:
                    seconds = [
                        first_token(page, mode, wav, texts[key], args.record_margin)
                        for _ in range(args.repeats)
                    ]
                    medians[mode].append(statistics.median(seconds))
                    heard[mode] = page.heard()
                if args.screenshot is not None and key == (
                    args.screenshot_utt or first
                ):
                    page.reset()
                    page.upload(wav)
                    page.wait_until_answered(1, timeout=300)
                    page.screenshot(args.screenshot)
            times = " | ".join(f"{medians[mode][-1]:.2f}" for mode in MODES)
            print(
                f"| {key} | {len(samples) / rate:.1f} | {texts[key]} | "
                f"{heard['uploaded']} | {heard['recorded']} | {times} |",
                flush=True,
            )
    overall = {mode: statistics.median(values) for mode, values in medians.items()}
    ratios = ", ".join(f"{m} {overall[m] / overall['typed']:.2f}" for m in MODES[:2])
    print(
        "median: "
        + ", ".join(f"{mode} {value:.2f} s" for mode, value in overall.items())
        + f"; speech/typed: {ratios}"
    )


if __name__ == "__main__":
    main()
