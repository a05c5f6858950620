"""Measure AlignChat's cost claims in one run; print a table of figures and ratios, save JSON.

    cd egs2/alignchat && python -m espnet_alignchat.bin.benchmark     # the real track's model

    python -m espnet_alignchat.bin.benchmark --model_dir exp/train_instruct \\
        --data_dir dump/raw/test --train_dir dump/raw/dev --asr none --output bench.json

Sections (``--sections``, all by default), on utterances of ``--data_dir`` (the first
``--num_utterances`` by id) and the trained model of ``--model_dir``:

- ``positions``: LLM input positions of the speech (one per decoded token) per token of the
  transcript, and what 12.5 Hz and 25 Hz frame-rate adapters would feed for the same audio;
- ``latency``: time to the first answer token, one question at a time and streamed, for the
  typed transcript, for the speech (speech tokenizer + LLM) and for the cascade (``--asr``, a
  Whisper dir: its transcript typed to the same LLM); median over ``--latency_utterances``;
- ``throughput``: self-generation (the LLM answering transcripts, as stage 5) and decoding
  (speech to answer, as stage 7), in batches of ``--batch_size`` sorted by length against one
  at a time;
- ``training``: stage-1 and stage-2 steps (forward, backward, AdamW) on a batch of
  ``--train_dir`` (which needs ``response``/``response_int`` for stage 2), with the frozen
  encoder's outputs cached (as the recipe trains a frozen pretrained encoder) and without;
- ``depth``: stage 1 with random LLMs of the model's width and vocabulary and ``--depths``
  layers, with only the embedding matrix read (AlignChat) and with the whole LLM resident.

Training measurements run each in a fresh process, so that peak memory is its own (CPU: peak
resident set of the process during the steps, with the model and the LLM's resident
weights; GPU: peak allocated memory).
"""

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from tqdm import tqdm

from espnet_alignchat.atomic import atomic_write_text
from espnet_alignchat.benchmarking import (
    answer,
    build_untrained,
    caches_encoder_outputs,
    median_latency,
    peak_memory_mb,
    positions,
    read_utterances,
    reset_peak_memory,
    speech_prompt,
    streamed_answer,
    synchronize,
    text_prompt,
    training_batch,
    training_steps,
    transcribe,
)
from espnet_alignchat.cli import (
    add_decoding_arguments,
    decoding_options,
    exit_on_user_error,
    setup_logging,
)
from espnet_alignchat.errors import InputError
from espnet_alignchat.inference import load_model
from espnet_alignchat.llm import FrozenLLM
from espnet_alignchat.model_dir import locate_llm, read_config

PROG = "benchmark"
SECTIONS = ("positions", "latency", "throughput", "training", "depth")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model_dir", type=Path, default="exp/train_instruct_real")
    parser.add_argument("--model_file", default=None, help="a checkpoint of model_dir")
    parser.add_argument("--llm", default=None, help="the model's LLM stored elsewhere")
    parser.add_argument("--data_dir", type=Path, default="dump/raw/test_real")
    parser.add_argument("--train_dir", type=Path, default="dump/raw/dev_real")
    parser.add_argument(
        "--asr",
        default="downloads/whisper-tiny.en",
        help="Whisper of the cascade, or none",
    )
    parser.add_argument("--output", type=Path, default="benchmark.json")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=SECTIONS)
    parser.add_argument("--num_utterances", type=int, default=32)
    parser.add_argument("--latency_utterances", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--train_batch", type=int, default=8)
    parser.add_argument("--train_steps", type=int, default=5)
    parser.add_argument("--depths", type=int, nargs=2, default=[2, 32])
    parser.add_argument("--ngpu", type=int, default=0, help="0: CPU, 1: one GPU")
    parser.add_argument("--log_level", default="WARNING")
    add_decoding_arguments(parser)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser


# -- sections run in this process ------------------------------------------------------------
def measure_latency(args, model, utterances, decoding) -> Dict[str, Any]:
    from espnet_alignchat.bin.whisper_transcribe import WhisperASR

    llm = model.llm
    asr = None
    if args.asr != "none":
        asr = WhisperASR(args.asr, str(llm.device))
    paths: Dict[str, Any] = {
        "text": lambda u: lambda: text_prompt(model, u.text),
        "speech": lambda u: lambda: speech_prompt(
            model, transcribe(model, [u], decoding, 1)[0].vectors
        ),
    }
    if asr is not None:
        paths["cascade"] = lambda u: lambda: text_prompt(model, asr([u.samples])[0])
    figures = {}
    for name, prompt_of in paths.items():
        # Warm-up: the first call of each path loads and allocates.
        streamed_answer(llm, prompt_of(utterances[0]), args.max_new_tokens)
        runs = [
            streamed_answer(llm, prompt_of(u), args.max_new_tokens)
            for u in tqdm(utterances, desc=f"latency ({name})", unit="utt")
        ]
        figures[name] = median_latency(runs)
    figures["utterances"] = len(utterances)
    figures["speech_per_text_first_token"] = (
        figures["speech"]["first_token"] / figures["text"]["first_token"]
    )
    if asr is not None:
        figures["speech_per_cascade_first_token"] = (
            figures["speech"]["first_token"] / figures["cascade"]["first_token"]
        )
    return figures


def measure_throughput(args, model, utterances, decoding) -> Dict[str, Any]:
    device = model.llm.device
    figures: Dict[str, Any] = {"utterances": len(utterances)}
    text_prompts = [text_prompt(model, u.text) for u in utterances]

    def self_generation(batch_size: int, progress: Optional[str]) -> int:
        return answer(
            model.llm, text_prompts, batch_size, args.max_new_tokens, progress
        )

    def decoding_run(batch_size: int, progress: Optional[str]) -> int:
        hypotheses = transcribe(model, utterances, decoding, batch_size, progress)
        prompts = [speech_prompt(model, h.vectors) for h in hypotheses]
        return answer(model.llm, prompts, batch_size, args.max_new_tokens, progress)

    for name, run in (("self_generation", self_generation), ("decoding", decoding_run)):
        run(args.batch_size, None)  # warm-up
        for batch_size in (1, args.batch_size):
            synchronize(device)
            start = time.perf_counter()
            tokens = run(
                batch_size, f"{name.replace('_', '-')}, batches of {batch_size}"
            )
            synchronize(device)
            seconds = time.perf_counter() - start
            figures[f"{name}_batch{batch_size}"] = dict(
                seconds=seconds,
                utterances_per_second=len(utterances) / seconds,
                answer_tokens=tokens,
            )
        one, many = figures[f"{name}_batch1"], figures[f"{name}_batch{args.batch_size}"]
        figures[f"{name}_speedup"] = one["seconds"] / many["seconds"]
    return figures


# -- training measurements, each in a fresh process -----------------------------------------
def training_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """One training measurement (`spec` as `run_worker` writes it)."""
    device = torch.device("cuda" if spec["ngpu"] > 0 else "cpu")
    model_dir = Path(spec["model_dir"])
    model = build_untrained(model_dir, spec["llm"], spec["mode"], device)
    reader = FrozenLLM(
        spec["tokenizer"]
    )  # the model's own LLM tokenizes the transcripts
    utterances = read_utterances(Path(spec["train_dir"]), reader, spec["batch"])
    if spec["full_llm"]:
        # What a stage 1 that loads the LLM would hold: every weight read once, as a copy to
        # a GPU would (transformers maps safetensors lazily on CPU).
        for parameter in model.llm.model.parameters():
            parameter.sum()
    resident = (
        list(model.llm.model.parameters())
        if model.llm.is_loaded
        else [model.llm.embeddings]
    )
    batch = training_batch(model, utterances, spec["cached"], device)
    reset_peak_memory(
        device
    )  # the steps' peak, with the model and LLM weights resident
    if spec["mode"] == "instruct" and "response" not in batch:
        raise SystemExit(f"{spec['train_dir']}: no response for stage 2")
    times = sorted(training_steps(model, batch, spec["steps"]))
    step = times[len(times) // 2]
    seconds = sum(u.seconds for u in utterances)
    return dict(
        step_seconds=step,
        utterances_per_second=len(utterances) / step,
        audio_seconds_per_second=seconds / step,
        peak_memory_mb=peak_memory_mb(device),
        llm_resident_mb=sum(t.numel() * t.element_size() for t in resident) / 2**20,
        llm_layers=model.llm.config.num_hidden_layers,
        batch=len(utterances),
    )


def run_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    command = [sys.executable, "-m", "espnet_alignchat.bin.benchmark"]
    result = subprocess.run(
        [*command, "--worker", json.dumps(spec)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"training measurement {spec} failed:\n{result.stderr[-3000:]}"
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def worker_spec(args, llm_path: str, **options) -> Dict[str, Any]:
    """What `training_worker` measures: the model's config on `--train_dir`'s batch."""
    spec = dict(
        model_dir=str(args.model_dir.absolute()),
        llm=args.llm,
        tokenizer=llm_path,
        train_dir=str(args.train_dir.absolute()),
        batch=args.train_batch,
        steps=args.train_steps,
        ngpu=args.ngpu,
        full_llm=False,
    )
    return {**spec, **options}


def measure_training(args, llm_path: str, cached_possible: bool) -> Dict[str, Any]:
    figures: Dict[str, Any] = {}
    for mode in ("pretrain", "instruct"):
        for cached in (True, False) if cached_possible else (False,):
            name = f"{mode}_{'cached' if cached else 'waveform'}"
            logging.info(f"training: {name}")
            spec = worker_spec(args, llm_path, mode=mode, cached=cached)
            figures[name] = run_worker(spec)
    if cached_possible:
        figures["pretrain_cached_speedup"] = (
            figures["pretrain_waveform"]["step_seconds"]
            / figures["pretrain_cached"]["step_seconds"]
        )
    return figures


def measure_depth(args, llm_path: str, cached_possible: bool) -> Dict[str, Any]:
    from espnet_alignchat.testing import save_random_llm

    shape = FrozenLLM(llm_path).config
    figures: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for depth in args.depths:
            random_llm = save_random_llm(
                Path(tmp) / f"llama-{depth}",
                "a b c".split(),
                num_layers=depth,
                hidden_size=shape.hidden_size,
                vocab_size=shape.vocab_size,
            )
            for full in (False, True):
                spec = worker_spec(
                    args,
                    llm_path,
                    llm=str(random_llm),
                    mode="pretrain",
                    cached=cached_possible,
                    full_llm=full,
                )
                figures[f"{depth}_layers_{'full' if full else 'embeddings'}"] = (
                    run_worker(spec)
                )
    shallow, deep = args.depths
    for kind in ("embeddings", "full"):
        a, b = figures[f"{shallow}_layers_{kind}"], figures[f"{deep}_layers_{kind}"]
        figures[f"{kind}_step_ratio_shallow_per_deep"] = (
            a["step_seconds"] / b["step_seconds"]
        )
        figures[f"{kind}_memory_ratio_deep_per_shallow"] = (
            b["peak_memory_mb"] / a["peak_memory_mb"]
        )
    return figures


# -- the table -------------------------------------------------------------------------------
def table(results: Dict[str, Any]) -> str:
    """The figures a person reads, with each target beside its ratio."""
    lines: List[str] = []
    add = lines.append
    if "positions" in results:
        p = results["positions"]
        add(
            f"## LLM positions ({p['utterances']} utterances, "
            f"{p['speech_seconds']:.0f} s of speech)\n"
        )
        add("| input | LLM positions | per second of speech | per AlignChat position |")
        add("|---|---|---|---|")
        seconds = p["speech_seconds"]
        add(
            f"| transcript (text) | {p['transcript_tokens']} | "
            f"{p['transcript_tokens'] / seconds:.2f} | |"
        )
        add(
            f"| AlignChat speech | {p['speech_positions']} | "
            f"{p['speech_positions_per_second']:.2f} | 1.00 |"
        )
        for rate in ("12.5", "25"):
            count = p[f"adapter_{rate}hz_positions"]
            add(
                f"| {rate} Hz adapter | {count} | {count / seconds:.2f} | "
                f"{p[f'adapter_{rate}hz_per_alignchat']:.2f} |"
            )
        add(
            f"\nspeech positions per transcript token: "
            f"{p['positions_per_transcript_token']:.3f} (target <= 1.05)\n"
        )
    if "latency" in results:
        lat = results["latency"]
        add(
            f"## Time to the first answer token (one at a time, streamed; median of "
            f"{lat['utterances']})\n"
        )
        add("| input | first token ms | of which front end ms | whole answer ms |")
        add("|---|---|---|---|")
        for name in ("text", "speech", "cascade"):
            if name in lat:
                f = lat[name]
                add(
                    f"| {name} | {1000 * f['first_token']:.0f} | "
                    f"{1000 * f['front_end']:.0f} | {1000 * f['whole_answer']:.0f} |"
                )
        add(
            f"\nspeech / text first token: {lat['speech_per_text_first_token']:.2f} "
            "(target <= 1.5)"
        )
        if "speech_per_cascade_first_token" in lat:
            add(
                f"speech / cascade first token: "
                f"{lat['speech_per_cascade_first_token']:.2f} (target <= 1)"
            )
        add("")
    if "throughput" in results:
        t = results["throughput"]
        batch = max(int(k.split("batch")[1]) for k in t if "_batch" in k)
        add(f"## Batched ({batch}) vs one at a time ({t['utterances']} utterances)\n")
        add("| job | one at a time utt/s | batched utt/s | speedup (target >= 5) |")
        add("|---|---|---|---|")
        for name in ("self_generation", "decoding"):
            one, many = t[f"{name}_batch1"], t[f"{name}_batch{batch}"]
            add(
                f"| {name.replace('_', '-')} | {one['utterances_per_second']:.2f} | "
                f"{many['utterances_per_second']:.2f} | {t[f'{name}_speedup']:.1f} |"
            )
        add("")
    if "training" in results:
        t = results["training"]
        add("## Training steps\n")
        add("| stage | encoder input | step ms | utt/s | audio s/s | peak MB |")
        add("|---|---|---|---|---|---|")
        for name, f in t.items():
            if isinstance(f, dict):
                mode, source = name.split("_")
                stage = "1 (pretrain)" if mode == "pretrain" else "2 (instruct)"
                add(
                    f"| {stage} | {source} | {1000 * f['step_seconds']:.0f} | "
                    f"{f['utterances_per_second']:.2f} | "
                    f"{f['audio_seconds_per_second']:.1f} | {f['peak_memory_mb']:.0f} |"
                )
        if "pretrain_cached_speedup" in t:
            add(
                f"\nstage 1 with cached encoder outputs: "
                f"{t['pretrain_cached_speedup']:.2f}x faster per step (target >= 3)"
            )
        add("")
    if "depth" in results:
        d = results["depth"]
        add("## Stage 1 against the LLM's depth\n")
        add("| LLM layers | LLM weights in memory | LLM MB | step ms | peak MB |")
        add("|---|---|---|---|---|")
        for name, f in d.items():
            if isinstance(f, dict):
                what = (
                    "E only (AlignChat)" if name.endswith("embeddings") else "full LLM"
                )
                add(
                    f"| {f['llm_layers']} | {what} | {f['llm_resident_mb']:.0f} | "
                    f"{1000 * f['step_seconds']:.0f} | {f['peak_memory_mb']:.0f} |"
                )
        add(
            f"\nE only: shallow/deep step time "
            f"{d['embeddings_step_ratio_shallow_per_deep']:.2f} (target >= 0.9), "
            f"deep/shallow peak memory {d['embeddings_memory_ratio_deep_per_shallow']:.2f}"
            " (target <= 1.05)"
        )
        add(
            f"full LLM: shallow/deep step time "
            f"{d['full_step_ratio_shallow_per_deep']:.2f}, deep/shallow peak memory "
            f"{d['full_memory_ratio_deep_per_shallow']:.2f}"
        )
        add("")
    return "\n".join(lines)


def benchmark(args: argparse.Namespace) -> Dict[str, Any]:
    device = torch.device("cuda" if args.ngpu > 0 else "cpu")
    model = load_model(args.model_dir, args.model_file, args.llm, device)
    if not model.transcribes:
        raise InputError(
            f"{args.model_dir}: the benchmark measures AlignChat's speech tokenizer; a "
            "frame-rate adapter's positions are measured by bin/data_sweep"
        )
    llm_path = args.llm or locate_llm(
        read_config(args.model_dir)["llm"], args.model_dir, str(args.model_dir)
    )
    decoding = decoding_options(args)
    utterances = read_utterances(args.data_dir, model.llm, args.num_utterances)
    results: Dict[str, Any] = dict(
        model_dir=str(args.model_dir),
        llm=llm_path,
        data_dir=str(args.data_dir),
        device=str(device),
        threads=torch.get_num_threads(),
        decoding=decoding,
        max_new_tokens=args.max_new_tokens,
    )
    if "positions" in args.sections:
        results["positions"] = positions(model, utterances, decoding, args.batch_size)
    if "latency" in args.sections:
        results["latency"] = measure_latency(
            args, model, utterances[: args.latency_utterances], decoding
        )
    if "throughput" in args.sections:
        results["throughput"] = measure_throughput(args, model, utterances, decoding)
    cached_possible = caches_encoder_outputs(model)
    del model  # the training measurements run in processes of their own
    if "training" in args.sections:
        results["training"] = measure_training(args, llm_path, cached_possible)
    if "depth" in args.sections:
        results["depth"] = measure_depth(args, llm_path, cached_possible)
    return results


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    setup_logging(args.log_level)
    if args.worker is not None:
        print(json.dumps(training_worker(json.loads(args.worker))))
        return
    with exit_on_user_error(PROG):
        results = benchmark(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output, json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"(figures saved in {args.output})")


if __name__ == "__main__":
    main()
