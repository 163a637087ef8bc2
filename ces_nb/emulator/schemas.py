"""Function declarations for the model: CES Schema -> google.genai Schema, and
a pythonFunction's signature (read with ast, never executed) -> Schema."""

from __future__ import annotations

import ast

from google.cloud import ces_v1
from google.genai import types
from google.protobuf import json_format

_PY_TYPES = {"str": "STRING", "int": "INTEGER", "float": "NUMBER", "bool": "BOOLEAN", "dict": "OBJECT", "list": "ARRAY"}


def to_genai_schema(schema: ces_v1.Schema | None) -> types.Schema | None:
    if schema is None or not ces_v1.Schema.pb(schema).ByteSize():
        return None
    type_name = ces_v1.Schema.Type(schema.type_).name
    out = types.Schema(
        type=None if type_name == "TYPE_UNSPECIFIED" else type_name,
        description=schema.description or None,
        enum=list(schema.enum) or None,
        required=list(schema.required) or None,
        nullable=schema.nullable or None,
    )
    if schema.properties:
        out.properties = {k: to_genai_schema(v) for k, v in schema.properties.items()}
    if ces_v1.Schema.pb(schema).HasField("items"):
        out.items = to_genai_schema(schema.items)
    if schema.any_of:
        out.any_of = [to_genai_schema(s) for s in schema.any_of]
    if ces_v1.Schema.pb(schema).HasField("default"):
        out.default = json_format.MessageToDict(ces_v1.Schema.pb(schema).default)
    return out


def python_function_declaration(name: str, code: str, description: str = "") -> types.FunctionDeclaration:
    """Parameters from the function's signature; the docstring's first paragraph describes it."""
    fn = next(
        (n for n in ast.walk(ast.parse(code)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name),
        None,
    )
    if fn is None:
        return types.FunctionDeclaration(name=name, description=description)
    args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
    defaults = [None] * (len(fn.args.posonlyargs + fn.args.args) - len(fn.args.defaults)) + list(fn.args.defaults)
    defaults += list(fn.args.kw_defaults)
    props, required = {}, []
    for arg, default in zip(args, defaults):
        annotation = ast.unparse(arg.annotation) if arg.annotation else "str"
        base = annotation.split("[", 1)[0].split(".")[-1]
        props[arg.arg] = types.Schema(type=_PY_TYPES.get(base, "STRING"))
        if default is None:
            required.append(arg.arg)
    doc = (ast.get_docstring(fn) or "").split("\n\n", 1)[0].strip()
    return types.FunctionDeclaration(
        name=name,
        description=description or doc,
        parameters=types.Schema(type="OBJECT", properties=props, required=required or None) if props else None,
    )
