"""The emulator's ADK telemetry settings: lean spans that still carry what root_span needs."""

from __future__ import annotations

import asyncio

from google.adk.sessions import InMemorySessionService
from google.cloud import ces_v1
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ces_nb.emulator.export import load_export
from ces_nb.emulator.python_runner import PythonToolRunner
from ces_nb.emulator.runtime import AppRuntime
from ces_nb.emulator.server import demo_app_path
from ces_nb.emulator.tracing import turn_router

# Experimental-semconv attributes that serialize the whole prompt on every model call.
PROMPT_ATTRIBUTES = ("gen_ai.input.messages", "gen_ai.system_instructions", "gen_ai.tool.definitions")


def test_model_spans_skip_the_prompt_but_keep_what_root_span_reads():
    turn_router()
    exporter = InMemorySpanExporter()
    trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))

    async def turn():
        runtime = AppRuntime(load_export(str(demo_app_path())), InMemorySessionService(), PythonToolRunner())
        try:
            config = ces_v1.SessionConfig(session="projects/p/locations/l/apps/skyway/sessions/lean")
            return await runtime.run_turn_to_end("lean", config, [ces_v1.SessionInput(text="What's the status of flight SW42?")])
        finally:
            await runtime.python_runner.close()

    try:
        outputs = asyncio.run(turn())
        spans = exporter.get_finished_spans()
    finally:
        exporter.shutdown()
    model_spans = [s for s in spans if s.attributes.get("gen_ai.operation.name") == "generate_content"]
    tool_spans = [s for s in spans if s.attributes.get("gen_ai.operation.name") == "execute_tool"]
    assert model_spans and tool_spans
    for span in model_spans:
        assert not [a for a in PROMPT_ATTRIBUTES if a in span.attributes]
        for key in ("gen_ai.agent.name", "gen_ai.request.model", "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"):
            assert key in span.attributes
    assert {"gen_ai.tool.name", "gen_ai.tool.call.id"} <= set(tool_spans[0].attributes)
    root = outputs[-1].diagnostic_info.root_span
    assert [c.name for c in root.child_spans if c.name in ("LLM", "Tool")][:2] == ["LLM", "Tool"]
