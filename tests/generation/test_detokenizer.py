"""The streaming detokenizer never lets a partial character out."""
import pytest

from webapp.generation.detokenizer import REPLACEMENT, StreamingDetokenizer

TEXTS = [
    "日本語のテキストを書いています。",
    "Party time 🎉🎈 with family 👨‍👩‍👧 and café crème",
    "Plain English, with spaces   and\nnew lines.",
]


@pytest.mark.parametrize("text", TEXTS)
def test_stream_adds_up_to_the_text_and_never_shows_half_a_character(embedded, text):
    tokenizer = embedded.tokenizer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detokenizer = StreamingDetokenizer(tokenizer)
    pieces = [detokenizer.push(token) for token in ids] + [detokenizer.flush()]
    assert all(REPLACEMENT not in piece for piece in pieces)
    assert "".join(pieces) == text


def test_multibyte_characters_really_are_split_across_tokens(embedded):
    # guards the test above: the tokenizer must split at least one character over tokens
    tokenizer = embedded.tokenizer
    ids = tokenizer("🎉", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1
    assert REPLACEMENT in tokenizer.decode(ids[:1])


def test_context_is_not_repeated_and_spaces_survive(embedded):
    tokenizer = embedded.tokenizer
    context = tokenizer("The weather is", add_special_tokens=False)["input_ids"]
    detokenizer = StreamingDetokenizer(tokenizer, context)
    out = "".join(detokenizer.push(t) for t in tokenizer(" nice today", add_special_tokens=False)["input_ids"])
    assert out == " nice today"


def test_skip_drops_text_the_user_already_typed(embedded):
    tokenizer = embedded.tokenizer
    detokenizer = StreamingDetokenizer(tokenizer, skip_chars=len(" beaut"))
    out = "".join(detokenizer.push(t) for t in tokenizer(" beautiful day", add_special_tokens=False)["input_ids"])
    assert out == "iful day"
