"""Multi-turn prompts: the LLM's own chat template, with speech where a user's words would go."""

import pytest
import torch
from transformers import AutoTokenizer

from espnet_alignchat.llm import FrozenLLM, PromptError, Turn


@pytest.fixture(scope="module")
def llm(tiny_llm) -> FrozenLLM:
    return FrozenLLM(str(tiny_llm))


def flatten(pieces, replacement):
    """Token ids of the pieces, with `replacement` ids where vectors are."""
    ids = []
    for piece in pieces:
        ids += replacement if isinstance(piece, torch.Tensor) else piece
    return ids


@pytest.mark.parametrize("system", [None, "say yes"])
@pytest.mark.parametrize("template", ["{speech}", "please say {speech} again"])
def test_one_turn_is_the_single_turn_layout(llm, system, template):
    layout = llm.prompt_layout(system, template)
    speech = torch.randn(3, llm.hidden_size)
    pieces = llm.conversation_prompt([Turn("user", speech)], system, template)
    assert pieces[0] == layout.prefix and pieces[2] == layout.suffix
    assert pieces[1] is speech and len(pieces) == 3
    transcript = llm.tokenize("what is two plus three")
    ids = llm.conversation_prompt([Turn("user", transcript)], system, template)
    assert ids == [layout.prefix, transcript, layout.suffix]
    # Typed, the same words take the same place in the template.
    typed = llm.conversation_prompt(
        [Turn("user", "what is two plus three")], system, template
    )
    assert typed == ids


def test_a_conversation_is_the_chat_template_with_speech_for_words(llm, tiny_llm):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm)
    said = "what is two plus three"
    speech = llm.embed(torch.tensor(llm.tokenize(said)))  # one vector per token
    turns = [
        Turn("user", speech),
        Turn("assistant", "five"),
        Turn("user", "and one plus one"),
        Turn("assistant", "two"),
        Turn("user", speech),
    ]
    messages = [{"role": "system", "content": "say yes"}] + [
        {"role": t.role, "content": said if t.content is speech else t.content}
        for t in turns
    ]
    expected = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True
    )["input_ids"]
    pieces = llm.conversation_prompt(turns, "say yes")
    assert flatten(pieces, llm.tokenize(said)) == expected
    # The LLM reads the same embeddings either way.
    as_text = llm.build_inputs([[expected]]).inputs_embeds
    assert torch.equal(llm.build_inputs([pieces]).inputs_embeds, as_text)


def test_bad_turns_are_refused(llm):
    speech = torch.randn(2, llm.hidden_size)
    with pytest.raises(PromptError, match="not assistant speech"):
        llm.conversation_prompt([Turn("assistant", speech)])
    with pytest.raises(PromptError, match="not system text"):
        llm.conversation_prompt([Turn("system", "hi")])
    with pytest.raises(PromptError, match="must contain"):
        llm.conversation_prompt([Turn("user", speech)], user_template="no slot")
