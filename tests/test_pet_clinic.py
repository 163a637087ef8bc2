"""The tutorial's own export (notebooks/pet_clinic: a cxas-scrapi project with no examples/, its
script in evals/goldens), conversed with through the official gRPC client: goldens with
placeholders filled from the live tools, tools that use `context` and `tools`, a callback that
answers without the model, a keyword guardrail, and end_session."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.cloud import ces_v1

import ces_nb

EXPORT = Path(__file__).resolve().parent.parent / "notebooks" / "pet_clinic" / "cxas_app" / "Pet Clinic"
APP = "projects/my-project/locations/us/apps/pet-clinic"


@pytest.fixture(scope="module")
def client():
    client = ces_nb.connect(APP, endpoint=ces_nb.start_emulator(EXPORT))
    yield client
    client.close()


def _span_names(span) -> list[str]:
    return [span.name, *(n for child in span.children for n in _span_names(child))]


def test_the_golden_plays_with_the_live_tools_answers(client):
    session = client.session()
    session.send(variables={"owner_name": "Sam"})
    assert session.send(event="welcome").text == "Hello Sam, welcome to the Pet Clinic! How can I help?"
    turn = session.send("When is Bella's next appointment?")
    # Bella as the user said it (the golden says Max); the day, time and vet from the real tools,
    # find_appointment calling tools.vet_on_call: the text waits for the call it reports.
    assert turn.text == "Bella's next appointment is on Monday at 14:30 with Dr. Rivera."
    assert [c.name for c in turn.tool_calls] == [] and "Tool" in _span_names(turn.root_span)
    bye = session.send("Great, thanks. Bye!")
    assert bye.text == "Goodbye, see you and Bella soon!"  # pet_name, written to state by the tool
    assert bye.ended


def test_a_callback_answers_without_the_model_and_a_guardrail_steps_in(client):
    session = client.session()
    hours = session.send("What are your opening hours?")
    assert hours.text == "We're open 8 to 6, Monday to Saturday."
    assert "LLM" not in _span_names(hours.root_span) and "Callback" in _span_names(hours.root_span)
    refused = session.send("Can you diagnose my cat's cough?")
    assert refused.text.startswith("I can't diagnose your pet")
    assert "Guardrail" in _span_names(refused.root_span) and "LLM" not in _span_names(refused.root_span)


def test_the_load_report_says_everything_runs(client):
    app = client.agents.get_app(name=APP)
    assert [e for e in app.validation_errors if "ignored" in e] == []
    assert ces_v1.App.pb(app).root_agent
