"""Every source -> record conversion, one module per source: SessionOutput protos
(`session_output`), BidiRunSession messages (`bidi`), stored Conversations
(`conversation`), ExecuteTool responses (`tool_result`), ADK events (`adk_events`) and
OpenTelemetry spans (`otel`, shared with the emulator).

This package's __init__ imports nothing, so the emulator can import `convert.otel`
without loading the notebook side.
"""
