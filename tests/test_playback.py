"""The playback model's choices, on conversations built by hand."""

from __future__ import annotations

import asyncio

from google.adk.models.llm_request import LlmRequest
from google.genai import types

from ces_nb.emulator.export import load_export
from ces_nb.emulator.playback import (CHAR_RATIO_CHARS, PlaybackLlm, adapt_args, compile_example, fill_placeholders, similarity,
                                     word_count)
from ces_nb.emulator.server import demo_app_path

APP = load_export(str(demo_app_path()))
SCRIPTS = [compile_example(e, APP.app.root_agent) for e in APP.examples]


def model(agent="SkyWay Concierge"):
    return PlaybackLlm(agent_display_name=agent, scripts=SCRIPTS, fallback_text="FALLBACK",
                       agent_names={"SkyWay Concierge": "SkyWay_Concierge", "Booking Agent": "Booking_Agent"})


def reply(llm, *contents):
    async def go():
        return [r async for r in llm.generate_content_async(LlmRequest(contents=list(contents)))]
    return asyncio.run(go())[-1]


def user(text):
    return types.Content(role="user", parts=[types.Part(text=text)])


def test_same_conversation_same_reply():
    a = reply(model(), user("how do I check bags"))
    b = reply(model(), user("how do I check bags"))
    assert a.content == b.content
    assert a.content.parts[0].function_call.name == "search_policies"


def test_tool_call_then_text_after_the_response():
    call = reply(model(), user("status of SW88 please")).content.parts[0].function_call
    assert call.args == {"flight_number": "SW88"}
    answer = reply(model(), user("status of SW88 please"),
                   types.Content(role="model", parts=[types.Part(function_call=call)]),
                   types.Content(role="user", parts=[types.Part(function_response=types.FunctionResponse(
                       id=call.id, name=call.name, response={"flight_number": "SW88", "status": "cancelled", "gate": "Z9", "departure_time": "noon"}))]))
    assert answer.content.parts[0].text == "Flight SW88 is cancelled. It departs from gate Z9 at noon."


def test_transfer_is_emitted_as_transfer_to_agent():
    parts = reply(model(), user("I'd like to book a seat")).content.parts
    assert parts[0].text.startswith("Let me hand you over")
    assert parts[1].function_call.name == "transfer_to_agent"
    assert parts[1].function_call.args == {"agent_name": "Booking_Agent"}


def test_unmatched_input_falls_back():
    assert reply(model(), user("zebra quantum")).content.parts[0].text == "FALLBACK"


def test_payload_travels_in_custom_metadata():
    response = reply(model(), user("send me my boarding pass"))
    assert response.custom_metadata["ces_payloads"][0]["type"] == "boarding_pass"


def test_placeholders_and_args_adaptation():
    assert fill_placeholders("Hi {name}, {missing} {a.b}", {"name": "Ada", "a": {"b": 2.0}}) == "Hi Ada, {missing} 2"
    # a placeholder alone keeps the value's type: an amount stays a number
    assert fill_placeholders({"amount": "{price}", "n": "{a.b}", "left": "{missing}"}, {"price": 210.0, "a": {"b": 2}}) == \
        {"amount": 210.0, "n": 2, "left": "{missing}"}
    assert adapt_args({"city": "Paris", "n": 1}, "weather in Paris", "weather in Lyon") == {"city": "Lyon", "n": 1}
    assert adapt_args({"flight": "SW123"}, "status of SW123", "status of my flight") == {"flight": "SW123"}
    assert similarity("Hello there", "hello, hi there") > similarity("Hello there", "book a seat")


def test_word_counts_and_scores_of_long_texts_are_what_the_whole_text_gives():
    """Counts and scores are remembered and cut for speed: the same numbers as computed in full."""
    import difflib

    for text in ("", "one", " two  words ", "word " * 2_000, "word\tand\nmore " * 20_000, "x " * 300_000):
        assert word_count(text) == len(text.split())
        assert word_count(text) == len(text.split())  # again, from memory
    long, short = "Hello there, what is the status of flight SK123? " * 1_500, "what is the status of flight SK123"
    words_a, words_b = set(long.lower().replace(",", " ").replace("?", " ").split()), set(short.lower().split())
    dice = 2 * len(words_a & words_b) / (len(words_a) + len(words_b))
    chars = difflib.SequenceMatcher(None, long.lower()[:CHAR_RATIO_CHARS], short.lower()).ratio()
    assert abs(similarity(long, short) - (0.75 * dice + 0.25 * chars)) < 1e-9
