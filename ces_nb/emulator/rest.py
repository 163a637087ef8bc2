"""The HTTP/JSON binding of the emulator's RPCs (`ces-nb emulator --rest-port PORT`).

Routes come from the official client's generated REST transports
(`google.cloud.ces_v1.services.*.transports.rest_base`: each method's `_get_http_options()`),
parsed once, so the binding follows what the client sends. Each request runs the very same
handler method the gRPC server calls, with a `RestContext` in place of the gRPC context: its
`abort()` raises, so `EmulatorError` and `abort_for` come out as Google's JSON error body with
the HTTP code of the status.

* Requests and responses use the proto JSON mapping (camelCase; both field spellings and enum
  names or numbers are accepted in). `?$alt=json;enum-encoding=int` (which the official client
  always sends) writes enums as numbers; `?prettyPrint=true` indents the output.
* Fields bound in the URL path (`{config.session=...}`) fill the request field when the body
  leaves it empty; a body that sets it to something else is a 400 saying so. Other fields of a
  GET or DELETE come from the query string (`pageSize=10`, `sources=LIVE&sources=SIMULATOR`).
* StreamRunSession answers a JSON array, each response sent as soon as the turn produces it. An
  error after the first response comes as a last element `{"error": {...}}`, as Google's do.
* A client that goes away cancels its call, as over gRPC.

It is a bare ASGI application served by uvicorn on the emulator's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import pkgutil
import logging
import re
import socket
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qsl, unquote

import grpc
from google.protobuf import descriptor, json_format
from google.protobuf.message import Message

from .auth import TokenCheck
from .errors import EmulatorError, clip, quote
from .listening import listening_socket
from .reflection import API_VERSIONS, PACKAGE, SERVED, rest_methods

log = logging.getLogger("ces_nb.emulator")

# The standard mapping from gRPC status to HTTP (google.rpc.Code's documentation).
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

# Google's system parameters: accepted on every route, and not request fields.
# Only $alt and prettyPrint change anything here.
SYSTEM_PARAMETERS = frozenset({
    "$alt", "alt", "$prettyPrint", "prettyPrint", "$fields", "fields", "key", "access_token", "quotaUser",
    "$callback", "callback", "$.xgafv", "upload_protocol", "uploadType", "$userIp", "userIp",
})

# A JSON body may be bigger than the gRPC message it stands for (base64 bytes, field names).
MAX_BODY_BYTES = 64 * 1024 * 1024
# Bodies and responses bigger than this are (de)serialized off the event loop, between other requests.
OFF_LOOP_BYTES = 512 * 1024

_JSON_HEADERS = [(b"content-type", b"application/json; charset=UTF-8")]
_VARIABLE = re.compile(r"\{(?P<field>[^}=]+)(?:=(?P<template>[^}]*))?\}")


# -- routes ------------------------------------------------------------------------------------

def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _segments(template: str) -> str:
    """A path template's segments as a regular expression: * is one segment, ** any number."""
    out = []
    for segment in template.split("/"):
        out.append("[^/]+" if segment == "*" else ".+" if segment == "**" else re.escape(segment).replace(r"\*\*", ".+").replace(r"\*", "[^/]+"))
    return "/".join(out)


def compile_template(uri: str) -> tuple[re.Pattern, tuple[str, ...]]:
    """`/v1/{config.session=projects/*/.../sessions/*}:runSession` -> a regex with one group per
    variable (matching the raw, still percent-encoded path), and the variables' field paths."""
    pattern, fields, end = [], [], 0
    for m in _VARIABLE.finditer(uri):
        pattern.append(_segments(uri[end:m.start()]))
        pattern.append(f"({_segments(m['template'] or '*')})")
        fields.append(m["field"])
        end = m.end()
    pattern.append(_segments(uri[end:]))
    return re.compile("".join(pattern) + r"\Z"), tuple(fields)


@dataclass(frozen=True)
class Route:
    rpc: str                    # "SessionService.RunSession"
    http_method: str            # "POST"
    uri: str                    # the template, as the client's transport has it
    regex: re.Pattern
    fields: tuple[str, ...]     # path-bound fields, in group order
    body: str | None            # "*", a field name, or None (fields come from the query string)
    request_type: Any = None    # proto-plus class; None for an RPC the emulator doesn't serve
    handler: Callable | None = None
    streaming: bool = False
    # Another API version than the handlers': the request is converted to this (v1) type, and
    # the response to `response_type`, through the wire format (the fields are the same).
    handler_request_type: Any = None
    response_type: Any = None
    package: str = PACKAGE      # the API version: google.cloud.ces.v1 or ...v1beta

    def __str__(self) -> str:
        return f"{self.http_method} {self.uri}"


def _module(package: str) -> str:
    return "google.cloud." + package.split(".")[-2] + "_" + package.split(".")[-1]  # google.cloud.ces_v1beta


def _rest_base(service: str, package: str = PACKAGE):
    """The generated `_Base<Service>RestTransport` of the version's client (google.cloud.ces_v1...)."""
    module = importlib.import_module(f"{_module(package)}.services.{_snake(service)}.transports.rest_base")
    return getattr(module, f"_Base{service}RestTransport")


def _all_services(package: str) -> list[str]:
    """Every service the version's client has a REST transport for (EvaluationService, ...)."""
    services = importlib.import_module(f"{_module(package)}.services")
    out = []
    for info in pkgutil.iter_modules(services.__path__):
        name = "".join(part.title() for part in info.name.split("_"))
        try:
            _rest_base(name, package)
        except (ImportError, AttributeError):
            continue
        out.append(name)
    return out


def _http_options(base) -> dict[str, list[dict]]:
    """{method name: its http options} for every method the REST transport binds."""
    out = {}
    for attr, value in vars(base).items():
        if attr.startswith("_Base") and isinstance(value, type) and hasattr(value, "_get_http_options"):
            out[attr[len("_Base"):]] = value._get_http_options()
    return out


def build_routes(services: dict[str, object]) -> list[Route]:
    """Routes for the RPCs of `services` ({"SessionService": handler object, ...}) that the
    official REST transports bind, for every API version (/v1/..., /v1beta/...), then 501 routes
    for the ones they bind and the emulator doesn't serve (CreateApp, GetLocation, evaluation
    datasets, ...), so those get a clear answer. A service only one version defines (v1beta's
    EvaluationService) is routed under that version only, to handlers taking its types."""
    bound, unserved, seen = [], [], set()
    for package in API_VERSIONS:
        available = _all_services(package)  # v1 has no EvaluationService
        for service in [*(s for s in services if s in available), *(s for s in available if s not in services)]:
            handlers = services.get(service)
            options = _http_options(_rest_base(service, package))
            methods = {m[0]: m for m in rest_methods(package, service)}
            v1 = {m[0]: m for m in SERVED.get(service, ())}
            for method, http_options in options.items():
                entry = methods.get(method)
                handler = getattr(handlers, _snake(method), None) if entry and handlers is not None else None
                rpc = f"{service}.{method}"
                for option in http_options:
                    regex, fields = compile_template(option["uri"])
                    http_method = option["method"].upper()
                    if handler is not None and not entry[3]:  # client streaming has no REST binding
                        other = package != PACKAGE and service in SERVED  # a v1 handler: convert
                        bound.append(Route(rpc, http_method, option["uri"], regex, fields, option.get("body"), entry[1], handler,
                                           streaming=entry[4], handler_request_type=v1[method][1] if other else None,
                                           response_type=entry[2] if other else None, package=package))
                    elif (http_method, option["uri"]) not in seen:
                        unserved.append(Route(rpc, http_method, option["uri"], regex, fields, option.get("body"), package=package))
                    seen.add((http_method, option["uri"]))
    return bound + unserved


# -- what handlers get in place of a grpc.aio.ServicerContext ------------------------------------

class RestContext:
    """The handlers' context for a REST call. `abort` raises EmulatorError, which the binding
    answers with the JSON error body and the HTTP code of the status."""

    __slots__ = ("_scope",)

    def __init__(self, scope: dict):
        self._scope = scope

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        raise EmulatorError(code, details)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in self._scope.get("headers", ()))

    def peer(self) -> str:
        host, port = self._scope.get("client") or ("unknown", 0)
        return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


# -- JSON ------------------------------------------------------------------------------------------

def _pb(message) -> Message:
    return message if isinstance(message, Message) else type(message).pb(message)


def to_json(message, ints: bool = False, pretty: bool = False) -> bytes:
    data = json_format.MessageToDict(_pb(message), use_integers_for_enums=ints)
    if pretty:
        return json.dumps(data, ensure_ascii=False, indent=2).encode()
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def error_json(code: grpc.StatusCode, message: str, method: str = "") -> bytes:
    """Google's JSON error body. Its ErrorInfo detail is what google-api-core reads as the
    exception's `reason` and `domain`."""
    info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": code.name, "domain": "ces-nb.emulator",
            "metadata": {"service": "ces.googleapis.com", **({"method": method} if method else {})}}
    return json.dumps({"error": {"code": HTTP_STATUS.get(code, 500), "message": message, "status": code.name, "details": [info]}},
                      ensure_ascii=False).encode()


def _converted(route: Route, response):
    """The handler's (v1) response as the route's version's message."""
    pb = _pb(response)
    if route.response_type is None or not isinstance(pb, Message):
        return pb
    return route.response_type.pb().FromString(pb.SerializeToString())


def _parse_body(body: bytes, target: Message, what: str) -> None:
    example = "e.g. {\"config\": {}, \"inputs\": [{\"text\": \"Hello\"}]}" if what.endswith("RunSessionRequest") else "a JSON object"
    try:
        data = json.loads(body)
    except RecursionError:
        raise EmulatorError.invalid_argument(f"the request body nests too deep to be a {what}") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise EmulatorError.invalid_argument(
            f"the request body is not JSON ({clip(str(exc), 200)}); send a {what} as a UTF-8 JSON object, {example}") from None
    if not isinstance(data, dict):
        raise EmulatorError.invalid_argument(f"the request body must be a JSON object (a {what}); got a JSON {type(data).__name__}")
    try:
        json_format.ParseDict(data, target)
    except (json_format.ParseError, RecursionError, ValueError, TypeError) as exc:
        raise EmulatorError.invalid_argument(
            f"the request body is not a valid {what}: {clip(str(exc), 400)} (field names are camelCase or snake_case)") from None


def _field(desc: descriptor.Descriptor, name: str):
    return desc.fields_by_camelcase_name.get(name) or desc.fields_by_name.get(name)


_BOOL = descriptor.FieldDescriptor.TYPE_BOOL


def _repeated(field: descriptor.FieldDescriptor) -> bool:
    is_repeated = getattr(field, "is_repeated", None)  # protobuf >= 6; `label` is gone in 7
    return is_repeated if is_repeated is not None else field.label == descriptor.FieldDescriptor.LABEL_REPEATED


def _query_value(field: descriptor.FieldDescriptor, key: str, value: str):
    kind = field.message_type
    if kind is not None:
        if not kind.full_name.startswith("google.protobuf."):
            raise EmulatorError.invalid_argument(f"query parameter {quote(key)} is a message; set its fields: {key}.FIELD=VALUE")
        if not (kind.name.endswith("Value") and len(kind.fields) == 1 and kind.fields[0].name == "value"):
            return value  # Timestamp, Duration, FieldMask: their JSON is a string
        field = kind.fields[0]  # a wrapper takes its scalar
    if field.type == _BOOL:
        if value.lower() not in ("true", "false"):
            raise EmulatorError.invalid_argument(f"query parameter {quote(key)} takes true or false; got {quote(value)}")
        return value.lower() == "true"
    return value  # numbers, enums (name or number), strings, bytes (base64): ParseDict converts


def _apply_query(params: list[tuple[str, str]], target: Message, route: Route) -> None:
    """Query parameters (a.b.c=VALUE, repeated for lists) into the request, for GET and DELETE."""
    tree: dict = {}
    root = target.DESCRIPTOR
    for key, value in params:
        if route.body == "*":
            raise EmulatorError.invalid_argument(
                f"{route.rpc.split('.')[-1]} takes its fields in the JSON body, not the query string; move {quote(key)} into the body")
        desc, node, parts = root, tree, key.split(".")
        for i, part in enumerate(parts):
            field = _field(desc, part)
            if field is None:
                known = ", ".join(f.camelcase_name for f in desc.fields)
                raise EmulatorError.invalid_argument(
                    f"unknown query parameter {quote(key)}: {desc.full_name} has no field {quote(part)}; its fields: {known}")
            if i < len(parts) - 1:
                if field.message_type is None or _repeated(field):
                    raise EmulatorError.invalid_argument(f"query parameter {quote(key)}: {field.name} has no subfields")
                node, desc = node.setdefault(field.name, {}), field.message_type
                continue
            item = _query_value(field, key, value)
            if _repeated(field):
                node.setdefault(field.name, []).append(item)
            elif field.name in node:
                raise EmulatorError.invalid_argument(f"query parameter {quote(key)} is given twice; it takes one value")
            else:
                node[field.name] = item
    if tree:
        try:
            json_format.ParseDict(tree, target)
        except (json_format.ParseError, ValueError, TypeError) as exc:
            raise EmulatorError.invalid_argument(f"the query string does not fit {root.full_name}: {clip(str(exc), 300)}") from None


def _bind_path(target: Message, field: str, value: str) -> None:
    """A URL path variable into its request field: fills it when empty, else they must agree."""
    *parents, leaf = field.split(".")
    message = target
    for part in parents:
        message = getattr(message, part)
    current = getattr(message, leaf)
    if not current:
        setattr(message, leaf, value)
    elif current != value:
        raise EmulatorError.invalid_argument(
            f"{field} is {quote(current)} in the request body but {quote(value)} in the URL path; "
            f"leave it out of the body, or make the two agree")


def _options(params: list[tuple[str, str]]) -> tuple[bool, bool, list[tuple[str, str]]]:
    """($alt says enums as numbers, prettyPrint, the parameters that are request fields)."""
    ints = pretty = False
    fields = []
    for key, value in params:
        if key not in SYSTEM_PARAMETERS:
            fields.append((key, value))
        elif key in ("$alt", "alt"):
            kind, *settings = [p.strip() for p in value.split(";")]
            if kind not in ("json", ""):
                raise EmulatorError.invalid_argument(f"{key}={quote(value)}: the emulator answers JSON only; use $alt=json or $alt=json;enum-encoding=int")
            for setting in settings:
                name, _, choice = setting.partition("=")
                if name != "enum-encoding" or choice not in ("int", "string", "name"):
                    raise EmulatorError.invalid_argument(f"{key}={quote(value)}: the only setting is enum-encoding=int (or =string)")
                ints = choice == "int"
        elif key in ("$prettyPrint", "prettyPrint"):
            pretty = value.lower() in ("true", "1", "")
    return ints, pretty, fields


# -- the ASGI application ------------------------------------------------------------------------

class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


async def _until_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _watched(receive, coro):
    """Runs `coro`, cancelling it (ClientGone) if the client disconnects first, as gRPC cancels a
    call whose client went away."""
    task = asyncio.ensure_future(coro)
    watcher = asyncio.ensure_future(_until_disconnect(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if task.cancelled():
        raise ClientGone
    return task.result()


async def _send(send, status: int, body: bytes, headers: list = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class RestApp:
    """The ASGI app: routes parsed once from the client's REST transports."""

    def __init__(self, services: dict[str, object], token: TokenCheck | None = None):
        self.token = token
        self.routes = build_routes(services)
        self._by_method: dict[str, list[Route]] = {}
        for route in self.routes:
            self._by_method.setdefault(route.http_method, []).append(route)
        self._served = ", ".join(str(r) for r in self.routes if r.handler is not None and r.package == PACKAGE)

    def find(self, method: str, path: str) -> tuple[Route, tuple[str, ...]]:
        for route in self._by_method.get(method, ()):
            m = route.regex.match(path)
            if m:
                return route, m.groups()
        other = sorted({r.http_method for r in self.routes if r.http_method != method and r.regex.match(path)})
        if other:
            raise EmulatorError.not_found(f"{method} {quote(path)} is not a CES route; that path takes {' or '.join(other)}")
        raise EmulatorError.not_found(
            f"no CES REST route for {method} {quote(path)}; the emulator serves {self._served} (and the same under /v1beta/)")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # lifespan is off and websockets are not served
            return
        started = False

        async def sending(message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._handle(scope, receive, sending)
        except ClientGone:
            pass
        except EmulatorError as exc:
            if not started:
                challenge = [(b"www-authenticate", b'Bearer realm="ces-nb emulator"')] if exc.code == grpc.StatusCode.UNAUTHENTICATED else []
                await _send(send, HTTP_STATUS.get(exc.code, 500), error_json(exc.code, exc.message), challenge)
        except Exception as exc:  # never crash the server; say what failed
            log.exception("REST %s %s failed", scope.get("method"), scope.get("path"))
            if not started:
                await _send(send, 500, error_json(grpc.StatusCode.INTERNAL, f"the emulator failed: {clip(repr(exc), 300)}"))

    async def _handle(self, scope, receive, send) -> None:
        raw = scope.get("raw_path")
        path = raw.decode("latin-1").partition("?")[0] if raw else scope["path"]
        route, values = self.find(scope["method"], path)
        if self.token is not None:
            header = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"authorization"), None)
            problem = self.token.problem(header)
            if problem is not None:
                raise EmulatorError(grpc.StatusCode.UNAUTHENTICATED, problem)
        query = scope.get("query_string", b"").decode("utf-8", "replace")
        ints, pretty, params = _options(parse_qsl(query, keep_blank_values=True))
        body = await self._read(receive, scope)
        if route.handler is None:
            raise EmulatorError.unimplemented(
                f"{route.package}.{route.rpc} is not served by the emulator; over REST it serves {self._served} (and the same under /v1beta/)")
        request = await self._request(route, values, body, params)
        context = RestContext(scope)
        if route.streaming:
            await _watched(receive, self._stream(route, request, context, send, ints))
            return
        response = await _watched(receive, self._call(route, request, context))
        pb = _converted(route, response)
        if pb.ByteSize() > OFF_LOOP_BYTES:
            payload = await asyncio.to_thread(to_json, pb, ints, pretty)
        else:
            payload = to_json(pb, ints, pretty)
        await _send(send, 200, payload)

    @staticmethod
    async def _read(receive, scope) -> bytes:
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
                raise EmulatorError.invalid_argument(
                    f"the request body is {int(value)} bytes; the emulator takes at most {MAX_BODY_BYTES} bytes of JSON")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise EmulatorError.invalid_argument(f"the request body is over {MAX_BODY_BYTES} bytes of JSON; send less")
            chunks.append(chunk)
            if not message.get("more_body"):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @staticmethod
    async def _request(route: Route, values: tuple[str, ...], body: bytes, params: list[tuple[str, str]]):
        pb = route.request_type.pb()()
        if route.body and body.strip():
            target = pb if route.body == "*" else getattr(pb, route.body)
            what = target.DESCRIPTOR.full_name
            if len(body) > OFF_LOOP_BYTES:
                await asyncio.to_thread(_parse_body, body, target, what)
            else:
                _parse_body(body, target, what)
        _apply_query(params, pb, route)
        for field, value in zip(route.fields, values):
            _bind_path(pb, field, unquote(value))
        if route.handler_request_type is not None:  # another version: the handler takes v1
            return route.handler_request_type.deserialize(pb.SerializeToString())
        return route.request_type.wrap(pb)

    @staticmethod
    async def _call(route: Route, request, context):
        try:
            return await route.handler(request, context)
        except EmulatorError:
            raise
        except Exception as exc:  # as services.unary answers it over gRPC
            log.exception("%s failed", route.rpc)
            raise EmulatorError.internal(f"the emulator failed in {route.rpc.split('.')[-1]}: {clip(repr(exc), 300)}") from None

    @staticmethod
    async def _stream(route: Route, request, context, send, ints: bool) -> None:
        """A JSON array, one element per response as the handler yields it. An error before the
        first is the HTTP error; after it, the last element."""
        responses = route.handler(request, context)
        try:
            try:
                first = await responses.__anext__()
            except StopAsyncIteration:
                await _send(send, 200, b"[]")
                return
            await send({"type": "http.response.start", "status": 200, "headers": _JSON_HEADERS})
            await send({"type": "http.response.body", "body": b"[" + to_json(_converted(route, first), ints), "more_body": True})
            try:
                async for response in responses:
                    await send({"type": "http.response.body", "body": b",\n" + to_json(_converted(route, response), ints), "more_body": True})
            except EmulatorError as exc:
                await send({"type": "http.response.body", "body": b",\n" + error_json(exc.code, exc.message), "more_body": True})
            except Exception as exc:
                log.exception("%s failed", route.rpc)
                await send({"type": "http.response.body", "more_body": True, "body": b",\n" + error_json(
                    grpc.StatusCode.INTERNAL, f"the emulator failed in {route.rpc.split('.')[-1]}: {clip(repr(exc), 300)}")})
            await send({"type": "http.response.body", "body": b"]"})
        finally:
            await responses.aclose()


# -- the server ----------------------------------------------------------------------------------

def _uvicorn_server(config):
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn on a loop it doesn't own: the emulator handles SIGINT/SIGTERM itself."""

        @contextlib.contextmanager
        def capture_signals(self):
            yield

        def install_signal_handlers(self) -> None:  # uvicorn before 0.29
            pass

    return Server(config)


def url_host(host: str) -> str:
    host = host.strip("[]")
    return f"[{host}]" if ":" in host else host


class RestServer:
    """uvicorn serving RestApp on the running event loop (the grpc.aio server's)."""

    def __init__(self, services: dict[str, object], host: str, port: int, token: TokenCheck | None = None,
                 reuse_port: bool = False):
        self.app = RestApp(services, token)
        self.host = host
        self.port = port
        self.reuse_port = reuse_port  # one of `--workers N` processes, all listening on this port (workers.py)
        self._socket: socket.socket | None = None
        self._server = None
        self._task: asyncio.Task | None = None

    @property
    def url(self) -> str:
        return f"http://{url_host(self.host)}:{self.port}"

    def bind(self) -> None:
        """Binds the port now (so a taken one is an error before anything serves); port 0 picks one."""
        self._socket = listening_socket(self.host, self.port, what="REST", flag="--rest-port", backlog=2048,
                                        reuse_port=self.reuse_port)
        self.port = self._socket.getsockname()[1]

    async def start(self) -> str:
        import uvicorn

        if self._socket is None:
            self.bind()
        config = uvicorn.Config(
            self.app, lifespan="off", log_config=None, log_level="warning", access_log=False, proxy_headers=False,
            server_header=False, ws="none", interface="asgi3", timeout_graceful_shutdown=2,
        )
        self._server = server = _uvicorn_server(config)
        self._task = asyncio.create_task(server.serve(sockets=[self._socket]), name="ces-nb REST")
        while not server.started:
            if self._task.done():
                error = self._task.exception() if not self._task.cancelled() else None
                raise OSError(f"the REST server did not start on {self.url}: {error!r}")
            await asyncio.sleep(0.005)
        return self.url

    async def stop(self, grace: float = 2.0) -> None:
        """Stops accepting, lets running calls finish for up to `grace` seconds, then cancels them."""
        if self._server is None:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
            return
        self._server.config.timeout_graceful_shutdown = grace
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace + 2)
        except (asyncio.TimeoutError, Exception) as exc:  # noqa: BLE001 - stopping must not fail
            self._task.cancel()
            log.debug("REST server stop: %r", exc)
        self._server = None
        self._task = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
