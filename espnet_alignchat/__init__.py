"""espnet-alignchat: end-to-end speech-to-text chat for a frozen LLM, as an ESPnet plugin."""

import contextlib
import io

__version__ = "0.1.0"

# Importing ESPnet prints noise that users cannot act on: g2p_en (pulled in by ESPnet's
# preprocessor) asks NLTK to download data, which fails offline, and ESPnet's attention module
# announces that flash-attn is absent. Import both once, with their output swallowed.
with (
    contextlib.redirect_stdout(io.StringIO()),
    contextlib.redirect_stderr(io.StringIO()),
):
    import espnet2.train.preprocessor  # noqa: F401
    import espnet.nets.pytorch_backend.transformer.attention  # noqa: F401
