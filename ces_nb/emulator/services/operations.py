"""google.longrunning.Operations for the emulator's long-running calls (RunEvaluation).

Clients poll an operation by name: over gRPC with `google.longrunning.Operations/GetOperation`
(no API version in the method), over REST with `GET /v1beta/{name=projects/*/locations/*/operations/*}`.
Operations are stored (evaluation_store.py), so any emulator process sharing the store answers."""

from __future__ import annotations

import grpc
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2

from ..errors import EmulatorError, quote
from . import unary

SERVICE = "google.longrunning.Operations"


class RawProto:
    """A protobuf class dressed as a proto-plus type (`pb`, `wrap`, `serialize`, `deserialize`),
    so the gRPC handlers and the REST binding take the well-known types too."""

    def __init__(self, cls):
        self.cls = cls
        self.__name__ = cls.__name__

    def pb(self, message=None):
        return self.cls if message is None else message

    def wrap(self, pb):
        return pb

    def __call__(self, *args, **kwargs):
        return self.cls(*args, **kwargs)

    @staticmethod
    def serialize(message) -> bytes:
        return message.SerializeToString()

    def deserialize(self, data: bytes):
        return self.cls.FromString(data)


GetOperationRequest = RawProto(operations_pb2.GetOperationRequest)
ListOperationsRequest = RawProto(operations_pb2.ListOperationsRequest)
ListOperationsResponse = RawProto(operations_pb2.ListOperationsResponse)
DeleteOperationRequest = RawProto(operations_pb2.DeleteOperationRequest)
CancelOperationRequest = RawProto(operations_pb2.CancelOperationRequest)
Operation = RawProto(operations_pb2.Operation)
Empty = RawProto(empty_pb2.Empty)


class Operations:
    """Operations kept in the evaluation store, kind "operation", parent `projects/*/locations/*`."""

    def __init__(self, store, settle=None):
        self.store = store
        # `settle(operation)`: the operation as it stands, e.g. ended when the process running it
        # died (the EvaluationService's runs); by default, as stored
        self._settle = settle

    async def _as_it_stands(self, operation):
        return await self._settle(operation) if self._settle is not None else operation

    async def get_operation(self, request, context) -> operations_pb2.Operation:
        name = request.name
        if "/operations/" not in name:
            raise EmulatorError.invalid_argument(
                f"name must look like 'projects/my-project/locations/us/operations/OPERATION_ID' (RunEvaluation "
                f"returns it); got {quote(name)}")
        operation = await self.store.get("operation", name, Operation)
        if operation is None:
            raise EmulatorError.not_found(f"operation {quote(name)} does not exist in this emulator's store")
        return await self._as_it_stands(operation)

    async def list_operations(self, request, context) -> operations_pb2.ListOperationsResponse:
        operations = [await self._as_it_stands(op) for op in await self.store.list("operation", request.name, Operation)]
        return operations_pb2.ListOperationsResponse(operations=operations)

    async def delete_operation(self, request, context) -> empty_pb2.Empty:
        if not await self.store.delete("operation", request.name):
            raise EmulatorError.not_found(f"operation {quote(request.name)} does not exist in this emulator's store")
        return empty_pb2.Empty()

    async def cancel_operation(self, request, context) -> empty_pb2.Empty:
        await self.get_operation(request, context)
        raise EmulatorError(grpc.StatusCode.FAILED_PRECONDITION,
                            "the emulator's evaluation runs cannot be cancelled; wait for the operation to finish")

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "GetOperation": unary(self.get_operation, GetOperationRequest, Operation),
            "ListOperations": unary(self.list_operations, ListOperationsRequest, ListOperationsResponse),
            "DeleteOperation": unary(self.delete_operation, DeleteOperationRequest, Empty),
            "CancelOperation": unary(self.cancel_operation, CancelOperationRequest, Empty),
        })
