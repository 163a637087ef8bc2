"""Errors the emulator answers with: a gRPC status code and a message that says what to do."""

from __future__ import annotations

import grpc

# Longest piece of a client's input echoed back in an error message.
ECHO_CHARS = 60


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


def quote(value: object) -> str:
    """A client's value as an error message may echo it: repr'd and cut to a short prefix, so a
    10 KB session id doesn't come back as a 10 KB status message."""
    return clip(repr(value), ECHO_CHARS)


class EmulatorError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def invalid_argument(cls, message: str) -> "EmulatorError":
        return cls(grpc.StatusCode.INVALID_ARGUMENT, message)

    @classmethod
    def not_found(cls, message: str) -> "EmulatorError":
        return cls(grpc.StatusCode.NOT_FOUND, message)

    @classmethod
    def failed_precondition(cls, message: str) -> "EmulatorError":
        return cls(grpc.StatusCode.FAILED_PRECONDITION, message)

    @classmethod
    def unimplemented(cls, message: str) -> "EmulatorError":
        return cls(grpc.StatusCode.UNIMPLEMENTED, message)

    @classmethod
    def aborted(cls, message: str) -> "EmulatorError":
        return cls(grpc.StatusCode.ABORTED, message)

    @classmethod
    def internal(cls, message: str) -> "EmulatorError":
        return cls(grpc.StatusCode.INTERNAL, message)
