"""google.cloud.ces.v1.ToolService.ExecuteTool: run one tool outside a session."""

from __future__ import annotations

import re

import grpc
from google.cloud import ces_v1
from google.protobuf import json_format

from .. import names
from ..agent_tools import ClientFunctionTool, PythonFunctionTool, SearchTool, build_tool, run_fake, toolset_offline_error
from ..errors import EmulatorError, clip, quote
from ..export import slugify
from ..fair_share import FairShare, checkpoint
from ..input_limits import args_size_error, tool_variables_size_error
from ..mocks import find_mock
from ..registry import AppRegistry
from ..runtime import grounding_output, to_struct
from . import unary

SERVICE = "google.cloud.ces.v1.ToolService"
FAIL = ces_v1.MockConfig.UnmatchedToolCallBehavior.FAIL
RESERVED_SYSTEM_TOOLS = ("end_session",)


class ToolService:
    def __init__(self, registry: AppRegistry, fair_share: FairShare):
        self.registry = registry
        self.fair_share = fair_share  # the server's, shared with the SessionService

    async def execute_tool(self, request: ces_v1.ExecuteToolRequest, context) -> ces_v1.ExecuteToolResponse:
        async with self.fair_share.request(context.peer()):
            await checkpoint()
            return await self._execute_tool(request)

    async def _execute_tool(self, request: ces_v1.ExecuteToolRequest) -> ces_v1.ExecuteToolResponse:
        pb = ces_v1.ExecuteToolRequest.pb(request)
        toolset_ref = request.toolset_tool.toolset if pb.HasField("toolset_tool") else ""
        if not toolset_ref and "/toolsets/" in request.tool:  # projects/../toolsets/<toolset>/tools/<toolId>
            toolset_ref, _, tool_id = request.tool.partition("/tools/")
            request = ces_v1.ExecuteToolRequest.wrap(ces_v1.ExecuteToolRequest.pb(request).__deepcopy__())
            request.toolset_tool = ces_v1.ToolsetTool(toolset=toolset_ref, tool_id=tool_id)
        if toolset_ref:
            return await self._execute_toolset_tool(request)
        if not request.tool:
            raise EmulatorError.invalid_argument(
                "set tool to a tool's resource name, e.g. 'projects/p/locations/us/apps/skyway/tools/get_flight_status', "
                "or toolset_tool to a toolset and a tool_id"
            )
        if "/" in request.tool:
            name = names.parse("tool", request.tool, "tool")
        else:  # a bare tool id under parent
            name = names.parse("app", request.parent, "parent")
            name = names.Name(name.project, name.location, name.app, request.tool)
        runtime = self.registry.runtime(name)
        display = next((d for d in runtime.app.tools if name.id == d), None)
        if display is None and name.id in RESERVED_SYSTEM_TOOLS:
            display = name.id  # end_session: a system tool every agent may list by name
        if display is None:
            raise EmulatorError.not_found(
                f"tool {quote(name.id)} is not in app {quote(name.app)}; tools: {', '.join(sorted(runtime.app.tools))}"
            )
        args = self._args(request)
        response = ces_v1.ExecuteToolResponse(tool=name.child("tools", display))
        if ces_v1.ExecuteToolRequest.pb(request).HasField("variables"):
            response.variables = request.variables
        if self._mocked(request, response, display, {display, name.id}, args):
            return response

        tool = runtime.tools.get(display) or build_tool(runtime.app, display, runtime.python_runner, runtime.indexes)
        if isinstance(tool, ClientFunctionTool):
            raise EmulatorError.failed_precondition(
                f"{display!r} is a client function: it runs in your client, not on the server; "
                "answer its tool_calls with tool_responses, or pass a mock_config"
            )
        if isinstance(tool, PythonFunctionTool):  # the request's variables are its session state
            body, after = await tool.execute_with_variables(args, self._variables(request))
            if after:
                response.variables = to_struct(after)
        else:
            body = await tool.execute(args, None)
        response.response = to_struct(body if isinstance(body, dict) else {"result": body})
        if isinstance(tool, SearchTool):
            grounding = grounding_output(tool, body)
            field = grounding.WhichOneof("output_type")  # citations or google_search_suggestions
            getattr(ces_v1.ExecuteToolResponse.pb(response), field).CopyFrom(getattr(grounding, field))
        return response

    async def _execute_toolset_tool(self, request: ces_v1.ExecuteToolRequest) -> ces_v1.ExecuteToolResponse:
        """A toolset's tool: a mock_config, else the toolset's fake code, else FAILED_PRECONDITION saying why."""
        ref = request.toolset_tool
        m = re.match(r"^(projects/[^/]+/locations/[^/]+/apps/[^/]+)/toolsets/([^/]+)$", ref.toolset)
        if m:
            app_name, toolset_id = m[1], m[2]
        else:  # a bare toolset id under parent
            app_name, toolset_id = request.parent, ref.toolset
        name = names.parse("app", app_name, "toolset_tool.toolset" if m else "parent")
        runtime = self.registry.runtime(name)
        app = runtime.app
        toolset = next((d for d in app.toolsets if toolset_id in (d, slugify(d))), None)
        if toolset is None:
            raise EmulatorError.not_found(
                f"toolset {quote(toolset_id)} is not in app {quote(name.app)}; toolsets: {', '.join(sorted(app.toolsets)) or 'none'}")
        tools = {op.tool_id: (display, op) for display, op in app.toolset_operations.items() if op.toolset == toolset}
        if ref.tool_id not in tools:
            raise EmulatorError.not_found(
                f"tool {quote(ref.tool_id)} is not a tool of toolset {quote(toolset)}; its tools: "
                f"{', '.join(sorted(tools)) or 'none (see GetApp validation_errors)'}")
        display, operation = tools[ref.tool_id]
        args = self._args(request)
        response = ces_v1.ExecuteToolResponse(toolset_tool=ces_v1.ToolsetTool(
            toolset=name.child("toolsets", toolset), tool_id=ref.tool_id))
        if ces_v1.ExecuteToolRequest.pb(request).HasField("variables"):
            response.variables = request.variables
        if self._mocked(request, response, ref.tool_id, {display, ref.tool_id, f"{toolset}/tools/{ref.tool_id}"}, args):
            return response
        tool = runtime.tools.get(display) or build_tool(app, display, runtime.python_runner, runtime.indexes)
        code = app.toolsets[toolset].tool_fake_config.code_block.python_code
        body = await run_fake(runtime.python_runner, code, tool.name, args, tool._timeout(),
                              context={"state": self._variables(request)}, filename=tool.fake_filename()) if code else None
        if body is None:  # no fake code, or it returned None ("use the real tool")
            raise EmulatorError.failed_precondition(toolset_offline_error(app.toolsets[toolset], operation))
        response.response = to_struct(body if isinstance(body, dict) else {"result": body})
        return response

    @staticmethod
    def _mocked(request: ces_v1.ExecuteToolRequest, response: ces_v1.ExecuteToolResponse, label: str,
                tool_names: set[str], args: dict) -> bool:
        """Whether the request's MockConfig answered the call (into `response`); FAILED_PRECONDITION
        when nothing matches and unmatched calls must fail."""
        if not ces_v1.ExecuteToolRequest.pb(request).HasField("mock_config"):
            return False
        mocked = find_mock(request.mock_config, tool_names, args)
        if mocked is not None:
            response.response = to_struct(mocked)
            return True
        if request.mock_config.unmatched_tool_call_behavior == FAIL:
            raise EmulatorError.failed_precondition(
                f"no mocked call to {label!r} matches args {clip(str(args), 200)}; add a mock for them or set "
                "unmatched_tool_call_behavior=PASS_THROUGH to run the tool")
        return False

    @staticmethod
    def _variables(request: ces_v1.ExecuteToolRequest) -> dict:
        pb = ces_v1.ExecuteToolRequest.pb(request)
        error = tool_variables_size_error(pb.variables.ByteSize())
        if error is not None:
            raise error
        return json_format.MessageToDict(pb.variables)

    @staticmethod
    def _args(request: ces_v1.ExecuteToolRequest) -> dict:
        error = args_size_error(ces_v1.ExecuteToolRequest.pb(request).args.ByteSize())
        if error is not None:  # over gRPC, refused before parsing (input_limits.early_refusal); here for REST
            raise error
        return json_format.MessageToDict(ces_v1.ExecuteToolRequest.pb(request).args)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE, {"ExecuteTool": unary(self.execute_tool, ces_v1.ExecuteToolRequest, ces_v1.ExecuteToolResponse)}
        )
