"""Stage-1 cost with only the LLM's embedding matrix loaded versus with the whole LLM loaded.

    python benchmarks/stage1_cost.py            # ~3 minutes on 2 CPU cores

Two random Llamas share a vocabulary and a width and differ in depth (2 and 16 layers). For each,
the default speech tokenizer (``conf/train_pretrain.yaml``) runs stage-1 training steps on a fixed
synthetic batch in a fresh process, once as AlignChat runs stage 1 (the embedding matrix ``E``
read alone) and once with the full LLM loaded beside it (every weight read once, as a copy to a
GPU would). Printed: the median step time, the process's peak resident memory and the
16-layer/2-layer ratios. Stage 1 must not cost more for a deeper LLM: with ``E`` alone both ratios
should stay near 1.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = "what is one two three four five six seven eight nine ten plus minus".split()


def worker(args) -> None:
    """One measurement, in its own process so that peak memory is its own."""
    import torch
    import yaml

    from espnet_alignchat.task import AlignChatTask

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    task_args = AlignChatTask.get_parser().parse_args(["--llm", args.llm])
    for key, value in yaml.safe_load(
        (ROOT / "conf/train_pretrain.yaml").read_text()
    ).items():
        if key in ("frontend", "specaug", "encoder") or key.endswith("_conf"):
            setattr(task_args, key, value)
    task_args.normalize, task_args.normalize_conf = "utterance_mvn", {}
    model = AlignChatTask.build_model(task_args)
    if args.full_llm:
        # What a stage 1 that loads the LLM would hold. transformers maps safetensors files
        # lazily on CPU, so untouched layers would not show in RSS; reading every weight
        # once makes them resident, as copying them to a GPU would.
        for param in model.llm.model.parameters():
            param.sum()
    llm_tensors = (
        model.llm.model.parameters() if args.full_llm else [model.llm.embeddings]
    )
    llm_bytes = sum(t.numel() * t.element_size() for t in llm_tensors)

    speech = torch.randn(args.batch, 3 * 16000) * 0.1
    text = torch.randint(7, 7 + len(WORDS), (args.batch, 12))
    batch = dict(
        speech=speech,
        speech_lengths=torch.full((args.batch,), speech.shape[1]),
        text=text,
        text_lengths=torch.full((args.batch,), text.shape[1]),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times = []
    for step in range(args.steps + 2):
        start = time.perf_counter()
        loss, _, _ = model(**batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= 2:  # the first steps allocate
            times.append(time.perf_counter() - start)
    print(
        json.dumps(
            dict(
                step_ms=1000 * statistics.median(times),
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                llm_mb=llm_bytes / 2**20,
            )
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, nargs=2, default=[2, 16])
    parser.add_argument("--hidden_size", type=int, default=1024)
    parser.add_argument("--vocab_size", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--llm", help=argparse.SUPPRESS)
    parser.add_argument("--full_llm", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from espnet_alignchat.testing import save_random_llm

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for layers in args.layers:
            llm = save_random_llm(
                Path(tmp) / f"llama-{layers}",
                WORDS,
                num_layers=layers,
                hidden_size=args.hidden_size,
                vocab_size=args.vocab_size,
            )
            for full in (False, True):
                command = [sys.executable, __file__, "--worker", "--llm", str(llm)]
                command += ["--batch", str(args.batch), "--steps", str(args.steps)]
                command += ["--threads", str(args.threads)] + (
                    ["--full_llm"] if full else []
                )
                output = subprocess.run(
                    command, capture_output=True, text=True, check=True
                )
                results[layers, full] = json.loads(
                    output.stdout.strip().splitlines()[-1]
                )

    shallow, deep = args.layers
    print(
        f"LLM: random Llama, vocab {args.vocab_size}, hidden {args.hidden_size}; "
        f"speech tokenizer: conf/train_pretrain.yaml; batch {args.batch} x 3 s, "
        f"median of {args.steps} steps, {args.threads} threads\n"
    )
    print("| LLM layers | LLM weights in memory | LLM MB | step ms | peak RSS MB |")
    print("|---|---|---|---|---|")
    for (layers, full), r in sorted(
        results.items(), key=lambda kv: (kv[0][1], kv[0][0])
    ):
        what = "full LLM" if full else "E only (AlignChat)"
        print(
            f"| {layers} | {what} | {r['llm_mb']:.0f} | {r['step_ms']:.0f} "
            f"| {r['peak_rss_mb']:.0f} |"
        )
    print(f"\n{deep}-layer / {shallow}-layer ratios:")
    for full in (False, True):
        what = "full LLM" if full else "E only  "
        a, b = results[shallow, full], results[deep, full]
        print(
            f"  {what}: step time {b['step_ms'] / a['step_ms']:.2f}, "
            f"peak RSS {b['peak_rss_mb'] / a['peak_rss_mb']:.2f}"
        )


if __name__ == "__main__":
    main()
