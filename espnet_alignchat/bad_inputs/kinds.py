"""The kinds of bad input, the entry points, and how each entry point handles each kind
(`HANDLING`, what "handled" means is in the package's doc); a `Record` per (entry point, kind)
and their Markdown table."""

from dataclasses import dataclass
from typing import Dict, List

FORMAT_DATA = "format_data"
TRAIN = "alignchat_train"
GENERATE = "generate_responses"
INFERENCE = "alignchat_inference"
CHAT = "chat"
API = "Speech2Chat"
VOICEBENCH = "voicebench_infer"
ENTRY_POINTS = (FORMAT_DATA, TRAIN, GENERATE, INFERENCE, CHAT, API, VOICEBENCH)

PROCESSED, SKIPPED = "processed", "skipped"

# Each kind: what the corpus holds of it. Its utterance id (and audio file name) is the kind.
KINDS = {
    "missing_file": "wav.scp names a file that does not exist",
    "empty_file": "a file of 0 bytes",
    "truncated_file": "a WAV file cut to half its bytes",
    "not_audio": "a text file named .wav",
    "nan_samples": "a float WAV with NaN samples",
    "all_zero": "audio whose every sample is 0",
    "failing_pipe": "a wav.scp command that fails (cat of a missing file)",
    "segment_past_end": "a segment ending 4 s past its recording's end",
    "stereo": "two channels",
    "rate_8k": "audio at 8 kHz",
    "rate_44k": "audio at 44.1 kHz",
    "rate_48k": "audio at 48 kHz",
    "minutes_long": "two minutes of audio",
    "empty_transcript": "a text line with the id alone (JSONL: an empty prompt)",
    "id_without_text": "audio, but no line in text",
    "id_without_audio": "in text (or a key file) only (JSONL: no audio field)",
    "duplicate_id": "a second line in every file",
    "unsorted_ids": "each file in another unsorted order",
    "crlf": "lines ending in CRLF",
    "bom": "files starting with a UTF-8 byte-order mark",
    "not_utf8": "a line with a Latin-1 byte",
}
UNREADABLE = (
    "missing_file",
    "empty_file",
    "truncated_file",
    "not_audio",
    "nan_samples",
)
CONVERTED = ("stereo", "rate_8k", "rate_44k", "rate_48k")
READ_AS_MEANT = ("unsorted_ids", "crlf", "bom")


# How an entry point that reads audio files handles each kind of file...
AUDIO_FILES = {
    **{kind: SKIPPED for kind in UNREADABLE},
    **{kind: PROCESSED for kind in CONVERTED},
    "all_zero": PROCESSED,
    "minutes_long": PROCESSED,
}
# ...and one that reads Kaldi-style text files (a repeated id: its later lines skipped).
TEXT_FILES = {
    "duplicate_id": SKIPPED,
    "not_utf8": SKIPPED,
    **{kind: PROCESSED for kind in READ_AS_MEANT},
}
# entry point -> kind -> how it is handled; a kind an entry point never reads is absent.
HANDLING: Dict[str, Dict[str, str]] = {
    FORMAT_DATA: {
        **AUDIO_FILES,
        **TEXT_FILES,
        "all_zero": SKIPPED,  # its filter of training sets: silent audio
        "minutes_long": SKIPPED,  # its --max_duration (30 s)
        "failing_pipe": SKIPPED,
        "segment_past_end": SKIPPED,
        "empty_transcript": SKIPPED,
        "id_without_text": SKIPPED,
        "id_without_audio": SKIPPED,
    },
    TRAIN: {  # what format_data wrote, or any wav.scp without segments
        **AUDIO_FILES,
        **TEXT_FILES,
        "failing_pipe": SKIPPED,
        "empty_transcript": SKIPPED,
        "id_without_text": SKIPPED,
        "id_without_audio": SKIPPED,
    },
    GENERATE: {**TEXT_FILES, "empty_transcript": SKIPPED, "id_without_text": SKIPPED},
    INFERENCE: {
        **AUDIO_FILES,
        **TEXT_FILES,
        "failing_pipe": SKIPPED,
        "segment_past_end": SKIPPED,
        "id_without_audio": SKIPPED,
    },
    CHAT: {**AUDIO_FILES, "all_zero": SKIPPED},  # ChatSession refuses silence
    API: dict(AUDIO_FILES),
    VOICEBENCH: {
        **AUDIO_FILES,
        "empty_transcript": SKIPPED,
        "id_without_audio": SKIPPED,
        "crlf": PROCESSED,
        "bom": PROCESSED,
        "not_utf8": SKIPPED,
    },
}


@dataclass
class Record:
    """Whether `entry_point` handled `kind` as `how` says, and the line the user saw."""

    entry_point: str
    kind: str
    handled: bool
    line: str
    how: str


def markdown_table(records: List[Record]) -> str:
    """Kinds × entry points: how each kind was handled (✓) or not (✗); – where an entry
    point never reads that kind; and each entry point's count of inputs handled."""
    cells = {(r.entry_point, r.kind): r for r in records}
    header = ["kind", *ENTRY_POINTS]
    rows = [header, ["---"] * len(header)]
    for kind in KINDS:
        row = [kind]
        for entry_point in ENTRY_POINTS:
            record = cells.get((entry_point, kind))
            if record is None:
                row.append("–")
            else:
                row.append(("✓ " if record.handled else "✗ ") + record.how)
        rows.append(row)
    totals = ["handled"]
    for entry_point in ENTRY_POINTS:
        mine = [r for r in records if r.entry_point == entry_point]
        totals.append(f"{sum(r.handled for r in mine)}/{len(mine)}")
    rows.append(totals)
    return "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n"
