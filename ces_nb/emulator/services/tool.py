"""google.cloud.ces.v1.ToolService.ExecuteTool: run one tool outside a session."""

from __future__ import annotations

import grpc
from google.cloud import ces_v1
from google.protobuf import json_format

from .. import names
from ..agent_tools import ClientFunctionTool, SearchTool, build_tool
from ..errors import EmulatorError, clip, quote
from ..mocks import find_mock
from ..registry import AppRegistry
from ..runtime import MAX_STRUCT_BYTES, byte_size, grounding_output, to_struct
from . import unary

SERVICE = "google.cloud.ces.v1.ToolService"
FAIL = ces_v1.MockConfig.UnmatchedToolCallBehavior.FAIL


class ToolService:
    def __init__(self, registry: AppRegistry):
        self.registry = registry

    async def execute_tool(self, request: ces_v1.ExecuteToolRequest, context) -> ces_v1.ExecuteToolResponse:
        if not request.tool:
            raise EmulatorError.invalid_argument(
                "set tool to a tool's resource name, e.g. 'projects/p/locations/us/apps/skyway/tools/get_flight_status'"
            )
        if "/" in request.tool:
            name = names.parse("tool", request.tool, "tool")
        else:  # a bare tool id under parent
            name = names.parse("app", request.parent, "parent")
            name = names.Name(name.project, name.location, name.app, request.tool)
        runtime = self.registry.runtime(name)
        display = next((d for d in runtime.app.tools if name.id == d), None)
        if display is None:
            raise EmulatorError.not_found(
                f"tool {quote(name.id)} is not in app {quote(name.app)}; tools: {', '.join(sorted(runtime.app.tools))}"
            )
        size = ces_v1.ExecuteToolRequest.pb(request).args.ByteSize()
        if size > MAX_STRUCT_BYTES:
            raise EmulatorError.invalid_argument(
                f"args are {byte_size(size)}; a tool takes at most {byte_size(MAX_STRUCT_BYTES)} of args: send smaller args"
            )
        args = json_format.MessageToDict(ces_v1.ExecuteToolRequest.pb(request).args)
        response = ces_v1.ExecuteToolResponse(tool=name.child("tools", display))
        if ces_v1.ExecuteToolRequest.pb(request).HasField("variables"):
            response.variables = request.variables

        if ces_v1.ExecuteToolRequest.pb(request).HasField("mock_config"):
            mocked = find_mock(request.mock_config, {display, name.id}, args)
            if mocked is not None:
                response.response = to_struct(mocked)
                return response
            if request.mock_config.unmatched_tool_call_behavior == FAIL:
                raise EmulatorError.failed_precondition(
                    f"no mocked call to {display!r} matches args {clip(str(args), 200)}; add a mock for them or set "
                    "unmatched_tool_call_behavior=PASS_THROUGH to run the tool"
                )

        tool = runtime.tools.get(display) or build_tool(runtime.app, display, runtime.python_runner, runtime.indexes)
        if isinstance(tool, ClientFunctionTool):
            raise EmulatorError.failed_precondition(
                f"{display!r} is a client function: it runs in your client, not on the server; "
                "answer its tool_calls with tool_responses, or pass a mock_config"
            )
        body = await tool.execute(args, None)
        response.response = to_struct(body if isinstance(body, dict) else {"result": body})
        if isinstance(tool, SearchTool):
            grounding = grounding_output(tool, body)
            field = grounding.WhichOneof("output_type")  # citations or google_search_suggestions
            getattr(ces_v1.ExecuteToolResponse.pb(response), field).CopyFrom(getattr(grounding, field))
        return response

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE, {"ExecuteTool": unary(self.execute_tool, ces_v1.ExecuteToolRequest, ces_v1.ExecuteToolResponse)}
        )
