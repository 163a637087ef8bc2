"""The error a bad evaluation file raises: which file, where inside it, and what belongs there."""

from __future__ import annotations


class EvalFileError(ValueError):
    """`path` is the file, `at` the place inside it (`conversations[2].turns[0].tool_calls[1]`),
    `problem` what was found and what was expected."""

    def __init__(self, path: str, at: str, problem: str):
        self.path, self.at, self.problem = str(path), at, problem
        where = f"{self.path}: {at}" if at else self.path
        super().__init__(f"{where}: {problem}")


def shown(value) -> str:
    """A value as an error message quotes it: its type, and the value cut short."""
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    kind = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "nothing (null)"}.get(type(value), type(value).__name__)
    return f"{kind} ({text})" if value is not None else kind
