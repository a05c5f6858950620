"""A web page to talk to a trained model: speak, upload a file or type (Gradio).

    chat = Speech2Chat.from_pretrained("exp/train_instruct_real", output_mode="canonical")
    launch(build_demo(chat))            # http://127.0.0.1:7860, until interrupted

A question spoken into the microphone or uploaded is answered as soon as the recording stops
or the file arrives. The page shows, side by side, the LLM's answer to the speech (streamed
token by token), what the speech tokenizer heard, the same LLM's answer to that transcript
typed, and which stretch of audio each LLM token came from (`alignment_figure`). The two
conversations go on turn by turn: a typed question goes to both, a spoken one as speech to
the first and as its transcript to the second. Bad input (silence, speech longer than
`max_seconds`, a file that is not audio) gets a one-line message on the page.

Gradio's usage analytics are off unless ``GRADIO_ANALYTICS_ENABLED`` says otherwise, and the
page loads nothing from outside its server (fonts included): it works offline.
"""

import os
import socket
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

# Read when gradio is imported: a local demo does not report its use to anyone by default.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from espnet_alignchat.alignment import alignment_figure, inspect_alignment  # noqa: E402
from espnet_alignchat.cli import USER_ERRORS, one_line  # noqa: E402
from espnet_alignchat.inference import Message, Speech2Chat  # noqa: E402
from espnet_alignchat.session import ChatSession  # noqa: E402

SPOKEN, TYPED = 0, 1  # the two conversations


class Conversations:
    """One visitor's two conversations with the same LLM: one hears the speech, the other
    reads what the speech tokenizer heard, typed. Held in the page's `gr.State`, so it
    holds messages only; the model stays with `Demo`."""

    def __init__(self) -> None:
        # What the LLM reads: speech turns as speech, and as their transcripts.
        self.histories: List[List[Message]] = [[], []]
        # What the page shows of each (Gradio's chat messages).
        self.views: List[List[Dict[str, str]]] = [[], []]


def update(
    conversations: Optional[Conversations] = None,
    heard: Optional[str] = None,
    figure: Optional[Figure] = None,
    message: Optional[str] = None,
    clear_text: bool = False,
) -> Tuple:
    """One update of the page's outputs (both chats, what was heard, the alignment, the
    message, the text input); what is not given stays as it is."""
    keep = gr.skip()
    views = conversations.views if conversations is not None else None
    return (
        keep if views is None else list(views[SPOKEN]),
        keep if views is None else list(views[TYPED]),
        keep if heard is None else heard,
        keep if figure is None else figure,
        (
            keep
            if message is None
            else (f"**Not answered:** {message}" if message else "")
        ),
        "" if clear_text else keep,
    )


class Demo:
    """The page's turns, around one model.

    Args:
        chat: the model.
        max_seconds: longer speech gets a message instead of an answer.
        options: options of every answer (`Speech2Chat.stream`).
    """

    def __init__(self, chat: Speech2Chat, max_seconds: float = 30.0, **options: Any):
        self.chat = chat
        self.max_seconds = max_seconds
        self.options = options

    def session(self, conversations: Conversations, which: int) -> ChatSession:
        session = ChatSession(self.chat, self.max_seconds, **self.options)
        session.history = conversations.histories[which]  # it extends this very list
        return session

    def speech_turn(
        self, path: Optional[str], name: str, conversations: Conversations
    ) -> Iterator[Tuple]:
        """Answer the speech in the file `path` (`name`: what a message calls it); yields
        the page's updates as the turn goes on."""
        if path is None:  # the input was cleared
            return
        spoken = self.session(conversations, SPOKEN)
        try:
            waveform = spoken.listen(path, name)
            message = spoken.hear(waveform, name)
        except USER_ERRORS as error:  # Gradio's upload path means nothing to the user
            yield update(message=one_line(error).replace(path, name))
            return
        heard = spoken.transcript(message)
        yield from self.answer(
            conversations, SPOKEN, message, f"(speech) {heard}", heard
        )
        yield update(figure=self.figure(waveform))
        yield from self.answer(conversations, TYPED, ChatSession.typed(heard), heard)

    def text_turn(self, text: str, conversations: Conversations) -> Iterator[Tuple]:
        """Answer typed text in both conversations."""
        text = text.strip()
        if not text:
            return
        for which in (SPOKEN, TYPED):
            message = ChatSession.typed(text)
            yield from self.answer(conversations, which, message, text)
        yield update(clear_text=True)

    def answer(
        self,
        conversations: Conversations,
        which: int,
        message: Message,
        shown: str,
        heard: Optional[str] = None,
    ) -> Iterator[Tuple]:
        """Stream the answer to `message` (shown as `shown`) into conversation `which`."""
        view = conversations.views[which]
        answer = {"role": "assistant", "content": ""}
        view += [{"role": "user", "content": shown}, answer]
        yield update(conversations, heard=heard, message="")
        for piece in self.session(conversations, which).answer(message):
            answer["content"] += piece
            yield update(conversations)

    def figure(self, waveform: np.ndarray) -> Figure:
        return alignment_figure(inspect_alignment(self.chat, waveform))


def build_demo(
    chat: Speech2Chat, title: str = "AlignChat", max_seconds: float = 30.0, **options
) -> gr.Blocks:
    """The page (a `gr.Blocks`; `launch` serves it). `options` go to every answer."""
    demo = Demo(chat, max_seconds, **options)
    with gr.Blocks(title=title) as page:
        gr.Markdown(
            f"## {title}\n"
            "Speak or upload a question: the speech tokenizer turns it into one vector per "
            "LLM token and the frozen LLM answers it (left). On the right, the same LLM "
            "answers what the tokenizer heard, typed. A typed question goes to both. "
            f"Speech of up to {max_seconds:g} s."
        )
        conversations = gr.State(Conversations)
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                audio = gr.Audio(
                    sources=["microphone", "upload"],
                    type="filepath",
                    label="Speak, or upload an audio file",
                    elem_id="speech-input",
                    buttons=["download"],  # not "share": it posts to the Hub
                )
                text = gr.Textbox(
                    label="Or type",
                    placeholder="Type a question and press Enter",
                    elem_id="typed-input",
                )
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    reset = gr.Button("Reset", elem_id="reset")
                message = gr.Markdown(elem_id="message")
                heard = gr.Textbox(
                    label="What the speech tokenizer heard",
                    interactive=False,
                    elem_id="heard",
                )
            speech_chat = gr.Chatbot(
                label="The LLM, reading the speech",
                elem_id="speech-chat",
                buttons=["copy", "copy_all"],  # not "share": it posts to the Hub
                scale=2,
                height=420,
            )
            text_chat = gr.Chatbot(
                label="The same LLM, reading the transcript typed",
                elem_id="text-chat",
                buttons=["copy", "copy_all"],
                scale=2,
                height=420,
            )
        gr.Markdown(
            "**Which stretch of audio each LLM token came from** (the latest speech: "
            "the decoder's cross-attention, one row per token)"
        )
        alignment = gr.Plot(show_label=False, elem_id="alignment")
        outputs = [speech_chat, text_chat, heard, alignment, message, text]
        # One model, two cores or one GPU: the page's turns take it one at a time.
        turn = dict(outputs=outputs, concurrency_id="model", concurrency_limit=1)

        def recorded(path: Optional[str], state: Conversations):
            yield from demo.speech_turn(path, "the recording", state)

        def uploaded(path: Optional[str], state: Conversations):
            yield from demo.speech_turn(path, Path(path or "").name, state)

        audio.stop_recording(recorded, [audio, conversations], **turn)
        audio.upload(uploaded, [audio, conversations], **turn)
        for event in (text.submit, send.click):
            event(demo.text_turn, [text, conversations], **turn)

        def start_over():
            return (Conversations(), [], [], "", None, "", "", None)

        # Clearing either chat starts both conversations over, as the reset button does.
        for event in (reset.click, speech_chat.clear, text_chat.clear):
            event(start_over, None, [conversations, *outputs, audio])
    return page


def launch(page: gr.Blocks, host: str = "127.0.0.1", port: Optional[int] = None):
    """Serve the page until interrupted (`port` None: Gradio's 7860, or the next free)."""
    page.queue().launch(server_name=host, server_port=port, ssr_mode=False)


def serve_in_background(page: gr.Blocks, host: str = "127.0.0.1") -> str:
    """Serve the page on a free port from a background thread (for the browser test and
    measurements; `page.close()` stops it); its address."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    page.queue().launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=True,
        ssr_mode=False,
        quiet=True,
    )
    return f"http://{host}:{port}"
