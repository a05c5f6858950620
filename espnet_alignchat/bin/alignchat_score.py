"""Score one decode dir (recipe stage 8): WER/TER with sclite, responses with sacrebleu.

    python -m espnet_alignchat.bin.alignchat_score --data_dir dump/raw/test \\
        --decode_dir exp/instruct/decode_test/test --llm exp/mini_llm

reads what decoding wrote (``text``, ``response``, ``text_input/response`` and, if present,
``cascade/response``, ``cascade_whisper/data/text`` and ``cascade_whisper/response``) and the data dir's ``text``, ``utt2spk`` and, if present, ``answer``;
writes ``score_wer/``, ``score_ter/`` (with ``--llm``), ``score_response/``, ``score_answer/``
and ``scores.json`` under the decode dir (see ``espnet_alignchat.scoring``) and prints a summary.
"""

import argparse
from pathlib import Path
from typing import Dict, List, Optional

from espnet2.utils.types import str_or_none

from espnet_alignchat.cli import exit_on_user_error, setup_logging
from espnet_alignchat.scoring import score_decode_dir


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data_dir", type=Path, required=True)
    parser.add_argument("--decode_dir", type=Path, required=True)
    parser.add_argument(
        "--llm",
        type=str_or_none,
        default=None,
        help="the LLM dir or hub id whose tokenizer gives the TER tokens; no TER without it",
    )
    parser.add_argument("--log_level", default="INFO")
    return parser


def summary(scores: Dict) -> List[str]:
    """A few lines for the log, like the ``Sum/Avg`` lines ESPnet's scoring stage prints."""
    lines = [f"{scores['decode_dir']}: {scores['utterances']} utterances"]
    if scores["wer"] is None:
        lines.append("  no transcript (the model writes none): answers scored alone")
    for name, label in (("wer", "WER"), ("ter", "TER"), ("wer_whisper", "Whisper WER")):
        if scores.get(name) is not None:
            rate = scores[name]
            lines.append(
                f"  {label} {rate['err']:.1f} (sub {rate['sub']:.1f}, "
                f"del {rate['del']:.1f}, ins {rate['ins']:.1f}) over {rate['wrd']}"
            )
    for name, pair in scores["response"].items():
        if name != "signatures":
            lines.append(
                f"  {name}: BLEU {pair['bleu']:.1f} chrF {pair['chrf']:.1f} "
                f"exact agreement {pair['exact_agreement']:.1f}%"
            )
    if "answer" in scores:
        answer = scores["answer"]
        accuracies = " ".join(
            f"{label} {answer[label]:.1f}%"
            for label in ("speech", "text", "cascade", "cascade_whisper")
            if label in answer
        )
        ratio = answer["speech_over_text"]
        lines.append(
            f"  accuracy: {accuracies}; speech/text "
            + ("n/a" if ratio is None else f"{ratio:.3f}")
        )
    missing = {name: n for name, n in scores["missing"].items() if n}
    if missing:
        counts = ", ".join(f"{name} {n}" for name, n in missing.items())
        lines.append(f"  missing lines, scored as empty: {counts}")
    return lines


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    setup_logging(args.log_level)
    with exit_on_user_error("alignchat_score"):
        scores = score_decode_dir(args.data_dir, args.decode_dir, args.llm)
    print("\n".join(summary(scores)))


if __name__ == "__main__":
    main()
