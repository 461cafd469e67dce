"""Payload validation: every bad field is named, with its allowed range."""
import math

import pytest

from webapp.web import protocol
from webapp.web.protocol import CancelRequest, ExtendRequest, ProtocolError, SamplingSettings, SuggestRequest

LIMIT = 1000


def suggest(**fields):
    return SuggestRequest.from_payload({"id": "r1", "text": "Hello", **fields}, LIMIT)


def test_defaults_fill_missing_settings():
    request = suggest()
    assert request.settings == SamplingSettings()
    assert request.settings.n == 3


def test_settings_are_typed():
    request = suggest(settings={"n": 2.0, "temperature": 1, "top_k": 0, "top_p": 0.5, "length": 5,
                                "stop_at": "length", "seed": 7, "max_time": 2})
    assert request.settings.n == 2 and isinstance(request.settings.n, int)
    assert request.settings.temperature == 1.0 and isinstance(request.settings.temperature, float)
    assert request.settings.seed == 7


def test_n_beside_settings_is_accepted():
    assert suggest(n=5).settings.n == 5


@pytest.mark.parametrize("name, value, words", [
    ("n", 0, "settings.n must be an integer from 1 to 5"),
    ("n", 6, "settings.n must be an integer from 1 to 5"),
    ("n", 2.5, "settings.n must be an integer from 1 to 5"),
    ("n", "3", "settings.n must be an integer from 1 to 5"),
    ("n", True, "settings.n must be an integer from 1 to 5"),
    ("temperature", -0.1, "settings.temperature must be a number from 0.0 to 2.0"),
    ("temperature", 2.5, "settings.temperature must be a number from 0.0 to 2.0"),
    ("temperature", math.nan, "settings.temperature must be a number from 0.0 to 2.0"),
    ("temperature", math.inf, "settings.temperature must be a number from 0.0 to 2.0"),
    ("top_p", 0, "settings.top_p must be a number from 0.01 to 1.0"),
    ("top_p", 1.5, "settings.top_p must be a number from 0.01 to 1.0"),
    ("top_k", -1, "settings.top_k must be an integer from 0 to 1000"),
    ("top_k", 5000, "settings.top_k must be an integer from 0 to 1000"),
    ("length", 0, "settings.length must be an integer from 1 to 64"),
    ("length", 65, "settings.length must be an integer from 1 to 64"),
    ("max_time", 0, "settings.max_time must be a number from 0.1 to 30.0"),
    ("stop_at", "word", "settings.stop_at must be one of length, sentence, paragraph"),
    ("seed", -1, "settings.seed must be an integer from 0 to 4294967295"),
])
def test_bad_setting_names_field_and_range(name, value, words):
    with pytest.raises(ProtocolError) as caught:
        suggest(settings={name: value})
    assert caught.value.field == f"settings.{name}"
    assert str(caught.value).startswith(words)
    assert caught.value.code == protocol.INVALID


def test_unknown_setting_is_refused():
    with pytest.raises(ProtocolError) as caught:
        suggest(settings={"temprature": 1})
    assert caught.value.field == "settings.temprature"


@pytest.mark.parametrize("payload, field", [
    (None, None),
    ("text", None),
    ([1, 2], None),
    ({"text": "x"}, "id"),
    ({"id": "", "text": "x"}, "id"),
    ({"id": "x" * 65, "text": "x"}, "id"),
    ({"id": ["a"], "text": "x"}, "id"),
    ({"id": "a"}, "text"),
    ({"id": "a", "text": 5}, "text"),
    ({"id": "a", "text": "x" * (LIMIT + 1)}, "text"),
    ({"id": "a", "text": "x", "settings": "hot"}, "settings"),
])
def test_bad_suggest_payloads(payload, field):
    with pytest.raises(ProtocolError) as caught:
        SuggestRequest.from_payload(payload, LIMIT)
    assert caught.value.field == field


def test_text_limit_message_gives_the_limit():
    with pytest.raises(ProtocolError, match=f"at most {LIMIT} characters"):
        SuggestRequest.from_payload({"id": "a", "text": "x" * (LIMIT + 1)}, LIMIT)


def test_integer_ids_become_strings():
    assert suggest(id=42).id == "42"


def test_extend_needs_a_parent_and_keeps_n():
    assert ExtendRequest.from_payload({"id": "b", "parent": "a"}).parent == "a"
    assert ExtendRequest.from_payload({"id": "b", "parent": "a", "settings": {"length": 4}}).settings == {"length": 4}
    with pytest.raises(ProtocolError) as caught:
        ExtendRequest.from_payload({"id": "b"})
    assert caught.value.field == "parent"
    with pytest.raises(ProtocolError) as caught:
        ExtendRequest.from_payload({"id": "b", "parent": "a", "settings": {"n": 2}})
    assert caught.value.field == "settings.n"
    with pytest.raises(ProtocolError) as caught:
        ExtendRequest.from_payload({"id": "b", "parent": "a", "settings": {"top_p": 3}})
    assert caught.value.field == "settings.top_p"


def test_cancel_needs_an_id():
    assert CancelRequest.from_payload({"id": "a"}).id == "a"
    with pytest.raises(ProtocolError):
        CancelRequest.from_payload({})


def test_error_payload_shape():
    error = ProtocolError("n is wrong", "settings.n")
    assert protocol.error_payload("r", error) == {"id": "r", "code": "invalid", "message": "n is wrong",
                                                  "field": "settings.n"}
    assert protocol.request_id_of({"id": 3}) == "3"
    assert protocol.request_id_of("junk") is None


def test_text_with_half_a_surrogate_pair_is_refused():
    with pytest.raises(ProtocolError) as error:
        SuggestRequest.from_payload({"id": "x", "text": "emoji cut in half \ud83d"}, 100)
    assert error.value.field == "text" and "Unicode" in str(error.value)


def test_decoding_modes_and_their_settings():
    request = suggest(settings={"mode": "beam", "beams": 5, "n": 5, "no_repeat_ngram": 3})
    assert (request.settings.mode, request.settings.beams, request.settings.no_repeat_ngram) == ("beam", 5, 3)
    for settings, field in [({"mode": "nucleus"}, "settings.mode"),
                            ({"mode": "beam", "beams": 2, "n": 3}, "settings.n"),
                            ({"beams": 9}, "settings.beams"), ({"no_repeat_ngram": -1}, "settings.no_repeat_ngram")]:
        with pytest.raises(ProtocolError) as error:
            suggest(settings=settings)
        assert error.value.field == field
    assert suggest(settings={"mode": "greedy", "n": 5}).settings.mode == "greedy", "greedy ignores the beams"
    with pytest.raises(ProtocolError) as error:
        ExtendRequest.from_payload({"id": "e", "parent": "r1", "settings": {"mode": "greedy"}})
    assert error.value.field == "settings.mode"


def test_distribution_requests_follow_the_rules_of_suggest():
    request = protocol.DistributionRequest.from_payload({"id": "d", "text": "Hi", "settings": {"top_k": 3}}, LIMIT)
    assert request.settings.top_k == 3
    with pytest.raises(ProtocolError) as error:
        protocol.DistributionRequest.from_payload({"id": "d", "text": "x" * (LIMIT + 1)}, LIMIT)
    assert error.value.field == "text"
