"""The data-efficiency sweep's table, claims and plot, from its record (``sweep.json``).

Only complete points (scored, see `espnet_alignchat.sweep`) are reported. Agreement is the
share of test prompts whose speech-conditioned answer equals the LLM's answer to the typed
prompt (normalised strings, stage 8's ``speech_vs_text``); hours are those of the stage-1
training set (stage 2 trains on part of it).
"""

from pathlib import Path
from typing import Dict, List, Optional, Sequence

from matplotlib.figure import Figure

from espnet_alignchat.results import NOT_APPLICABLE

LABELS = {"alignchat": "AlignChat", "frame_adapter": "frame-rate adapter"}


def complete_points(record: Dict) -> List[Dict]:
    """The scored points, by model type, then fraction."""
    points = [p for p in record["points"].values() if "scores" in p]
    return sorted(points, key=lambda p: (p["model"], p["fraction"]))


def agreement(point: Dict) -> float:
    return point["scores"]["response"]["speech_vs_text"]["exact_agreement"]


def cpu_s(point: Dict, stages: Sequence[str]) -> float:
    return sum(point["stages"][stage]["cpu_s"] for stage in stages)


def training_cpu_s(point: Dict) -> float:
    return cpu_s(point, ("4", "6"))


def point_cpu_s(point: Dict) -> float:
    """Every stage the point ran, and its positions measurement."""
    return cpu_s(point, list(point["stages"])) + point.get("positions_cpu_s", 0.0)


def total_cpu_s(record: Dict) -> float:
    setup = sum(cost["cpu_s"] for cost in record["setup"].values())
    return setup + sum(point_cpu_s(p) for p in record["points"].values())


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def share(fraction: float) -> str:
    """A fraction of the training utterances, as a percentage."""
    return f"{100 * fraction:g}%"


def table(points: Sequence[Dict]) -> List[str]:
    lines = [
        "| model | fraction | stage-1 utt | stage-1 h | stage-2 utt | agree % | chrF | "
        "WER | LLM positions / s | stage-1 CPU min | stage-2 CPU min | training wall "
        "min | all CPU min |",
        "|" + "---|" * 13,
    ]
    for p in points:
        wer = p["scores"].get("wer")
        speech = p["scores"]["response"]["speech_vs_text"]
        wall = sum(p["stages"][stage]["wall_s"] for stage in ("4", "6"))
        cells = [
            LABELS[p["model"]],
            share(p["fraction"]),
            str(p["stage1_utterances"]),
            f"{p['stage1_hours']:.2f}",
            str(p["stage2_utterances"]),
            f"{agreement(p):.1f}",
            f"{speech['chrf']:.1f}",
            NOT_APPLICABLE if wer is None else f"{wer['err']:.1f}",
            f"{p['positions']['speech_positions_per_second']:.2f}",
            minutes(cpu_s(p, ("4",))),
            minutes(cpu_s(p, ("6",))),
            minutes(wall),
            minutes(point_cpu_s(p)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _by_model(points: Sequence[Dict]) -> Dict[str, Dict[float, Dict]]:
    grouped: Dict[str, Dict[float, Dict]] = {}
    for p in points:
        grouped.setdefault(p["model"], {})[p["fraction"]] = p
    return grouped


def claims(points: Sequence[Dict], record: Dict) -> List[str]:
    """The issue's targets, each with the numbers it was checked on."""
    grouped = _by_model(points)
    lines = []
    ours, theirs = grouped.get("alignchat"), grouped.get("frame_adapter")
    if ours and theirs:
        common = sorted(set(ours) & set(theirs))
        if common:
            a, b = ours[common[-1]], theirs[common[-1]]
            rate_a = a["positions"]["speech_positions_per_second"]
            rate_b = b["positions"]["speech_positions_per_second"]
            lines.append(
                f"- LLM positions per second of test speech ({share(common[-1])} of the "
                "data): "
                f"adapter {rate_b:.2f}, AlignChat {rate_a:.2f}, ratio "
                f"{rate_b / rate_a:.2f} (about 3 expected)"
            )
            cost = training_cpu_s(b) / training_cpu_s(a)
            lines.append(
                f"- training CPU time at {share(common[-1])}: adapter "
                f"{minutes(training_cpu_s(b))} min, AlignChat "
                f"{minutes(training_cpu_s(a))} min (ratio {cost:.2f})"
            )
        low, high = min(ours), max(theirs)
        verdict = "met" if agreement(ours[low]) >= agreement(theirs[high]) else "missed"
        lines.append(
            f"- AlignChat at {share(low)} of the data ({agreement(ours[low]):.1f}% "
            f"agreement) >= the adapter at {share(high)} ({agreement(theirs[high]):.1f}%): "
            f"{verdict}"
        )
    total = total_cpu_s(record)
    lines.append(
        f"- CPU time of the whole sweep (every recipe process, and the positions "
        f"measurements): {minutes(total)} min ({total / 3600:.2f} h)"
    )
    return lines


def plot(points: Sequence[Dict], path: Path) -> None:
    """Agreement against hours of training speech, one line per model type."""
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    all_hours = sorted({p["stage1_hours"] for p in points})
    for model, by_fraction in _by_model(points).items():
        ordered = [by_fraction[f] for f in sorted(by_fraction)]
        hours = [p["stage1_hours"] for p in ordered]
        axes.plot(hours, [agreement(p) for p in ordered], "o-", label=LABELS[model])
        for p, x in zip(ordered, hours):
            axes.annotate(
                share(p["fraction"]),
                (x, agreement(p)),
                textcoords="offset points",
                xytext=(4, 4),
            )
    axes.set_xscale("log")
    axes.margins(x=0.15, y=0.1)  # room for the labels of the outermost points
    axes.set_xticks(all_hours, labels=[f"{h:.2g}" for h in all_hours])
    axes.minorticks_off()
    axes.set_xlabel("hours of training speech (log scale)")
    axes.set_ylabel("answers equal to the text answers (%)")
    axes.set_title("Speech/text agreement against training speech")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.savefig(path, dpi=120)


def report(record: Dict, png_name: Optional[str] = "sweep.png") -> str:
    """The Markdown report of the record (the plot is referred to as `png_name`)."""
    points = complete_points(record)
    lines = [
        f"# Data-efficiency sweep: {record['world']} world, budget {record['budget']}",
        "",
        "AlignChat and the frame-rate adapter trained on fractions of the training "
        "utterances and scored on the same test set (python -m "
        "espnet_alignchat.bin.data_sweep). agree: answers to the speech equal to the "
        "answers to the typed prompt (%); CPU: user + system time of every process; WER "
        f"{NOT_APPLICABLE}: the adapter writes no transcript.",
        "",
        *table(points),
        "",
        *claims(points, record),
    ]
    if png_name and points:
        lines += ["", f"![agreement against hours of speech]({png_name})"]
    return "\n".join(lines) + "\n"
