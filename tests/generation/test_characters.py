"""Whole characters in the learning views: tokens that each hold part of a character are shown as one."""
import math

import pytest
import torch

from webapp.generation.engine import Engine
from webapp.generation.settings import SamplingSettings
from webapp.generation.tokens import spell

JAPANESE = "今日はとても良い天気ですね。散歩に行きましょう。"


@pytest.fixture(scope="module")
def engine(embedded):
    return Engine(embedded)


def utf16_slice(text, start, end):
    return text.encode("utf-16-le")[2 * start:2 * end].decode("utf-16-le")


def direct_logprobs(engine, embedded, text):
    """Each token's log-probability, straight from the model."""
    ids = embedded.tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        inputs = torch.tensor([[engine.start_id] + ids])
        logprobs = torch.log_softmax(embedded.model(input_ids=inputs).logits[0, :-1].float(), dim=-1)
    return ids, logprobs[torch.arange(len(ids)), torch.tensor(ids)].tolist()


def test_spell_shows_whole_characters_and_stray_bytes():
    assert spell("今日 ok".encode()) == "今日 ok"
    assert spell("今".encode()[:2]) == "<0xE4><0xBB>"
    assert spell(b"\x8a" + "は".encode()) == "<0x8A>は"


def test_japanese_is_scored_in_whole_characters_that_keep_their_tokens_probabilities(engine, embedded):
    scores = engine.score(JAPANESE)[0]
    ids, direct = direct_logprobs(engine, embedded, JAPANESE)
    tokens = scores["tokens"]
    assert len(ids) > len(JAPANESE), "the embedded model splits these characters into several tokens"
    assert all("\ufffd" not in t["text"] for t in tokens)
    assert all("\ufffd" not in other["text"] for t in tokens for other in t["top"])
    assert [t["text"] for t in tokens] == list(JAPANESE), "one entry per character here"
    starts = [0] + [t["end"] for t in tokens[:-1]]
    assert [utf16_slice(JAPANESE, a, t["end"]) for a, t in zip(starts, tokens)] == list(JAPANESE), "no empty span"
    parts = [part for t in tokens for part in t.get("parts", [{"logprob": t["logprob"], "rank": t["rank"]}])]
    assert [p["logprob"] for p in parts] == pytest.approx(direct, abs=1e-4), "every token's own probability is kept"
    for token in tokens:
        if "parts" in token:
            assert token["logprob"] == pytest.approx(sum(p["logprob"] for p in token["parts"]), abs=1e-4)
            assert token["rank"] == max(p["rank"] for p in token["parts"])
            assert all(p["text"].startswith("<0x") or "\ufffd" not in p["text"] for p in token["parts"])
    assert scores["perplexity"] == pytest.approx(math.exp(-sum(direct) / len(direct)), rel=1e-4), \
        "the perplexity is still per token"


def test_a_character_split_after_a_space_and_text_without_splits(engine):
    text = "The capital of Japan is 東京"
    tokens = engine.score(text)[0]["tokens"]
    assert [t["text"] for t in tokens][-2:] == [" 東", "京"]
    assert all("parts" not in t for t in tokens[:-2])
    english = engine.score("The cat sat on the mat.")[0]["tokens"]
    assert all("parts" not in t for t in english), "whole tokens stay as they are"


def test_the_next_token_chart_shows_the_bytes_of_a_split_character(engine):
    logits, _ = engine.next_token_logits("東京は日本の")
    chart = engine.distribution(logits, SamplingSettings(temperature=1.0, top_k=0, top_p=1.0))
    texts = [t["text"] for t in chart["tokens"]]
    assert all("\ufffd" not in text for text in texts)
    partial = [t for t in chart["tokens"] if t["partial"]]
    assert partial and all(t["text"].startswith("<0x") for t in partial), texts
    assert not any(t["partial"] for t in engine.distribution(
        engine.next_token_logits("The capital of France is")[0], SamplingSettings())["tokens"][:3])
