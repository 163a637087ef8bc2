"""Errors the emulator answers with: a gRPC status code and a message that says what to do."""

from __future__ import annotations

import grpc


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
    def internal(cls, message: str) -> "EmulatorError":
        return cls(grpc.StatusCode.INTERNAL, message)
