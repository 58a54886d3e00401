#!/usr/bin/python3
"""Call any edgeplane method knowing only its name, from the controller's server reflection.

No edgeplane .proto file and no generated edgeplane code: the request and response types come
from the FileDescriptorProtos the controller serves over gRPC server reflection
(grpc.reflection.v1), loaded into a protobuf descriptor pool, as grpcurl and other
reflection-driven tools do. Only the reflection protocol's own stubs are needed: from the
grpcio-reflection package when it is installed, else generated at start-up with grpc_tools
from its .proto (--reflection-proto; default: the copy @grpc/reflection ships in this repo's
node_modules).

Usage:
  reflection_call.py --server HOST:PORT [TLS] --list
  reflection_call.py --server HOST:PORT [TLS] --file edgeplane/v1/policy.proto
  reflection_call.py --server HOST:PORT [TLS] edgeplane.v1.IntentService/ListPolicies ['{"pageSize": 10}'] [--max-messages N]

Output is JSON on stdout (the proto3 JSON mapping; one object per line for a stream).
Exit codes: 0 success, 1 the call or the reflection failed, 2 usage error.
"""

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

# The connection flags, channel and stream printing are edgeplane_client.py's (same folder).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from edgeplane_client import add_connection_flags, check_connection_flags, open_channel, print_stream  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_REFLECTION_PROTO = os.path.normpath(os.path.join(HERE, "..", "..", "node_modules", "@grpc", "reflection", "build", "proto", "grpc", "reflection", "v1", "reflection.proto"))


def reflection_stubs(proto_path, work_dir):
    """(reflection_pb2, reflection_pb2_grpc): grpcio-reflection's, or generated from proto_path."""
    try:
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc  # noqa: F401
        return reflection_pb2, reflection_pb2_grpc
    except ImportError:
        pass
    from grpc_tools import protoc

    # Under its own file name: a module path grpc/reflection/... would collide with grpcio's `grpc`.
    src = os.path.join(work_dir, "src")
    os.makedirs(src)
    shutil.copyfile(proto_path, os.path.join(src, "server_reflection_v1.proto"))
    if protoc.main(["grpc_tools.protoc", f"-I{src}", f"--python_out={work_dir}", f"--grpc_python_out={work_dir}", "server_reflection_v1.proto"]) != 0:
        raise SystemExit(f"reflection_call: protoc failed on {proto_path}")
    sys.path.insert(0, work_dir)
    return importlib.import_module("server_reflection_v1_pb2"), importlib.import_module("server_reflection_v1_pb2_grpc")


class Reflection:
    """Asks the server's reflection service; collects the files it sends by name."""

    def __init__(self, channel, pb2, pb2_grpc, timeout):
        self.stub = pb2_grpc.ServerReflectionStub(channel)
        self.pb2 = pb2
        self.timeout = timeout
        self.files = {}

    def ask(self, **request):
        response = next(iter(self.stub.ServerReflectionInfo(iter([self.pb2.ServerReflectionRequest(**request)]), timeout=self.timeout)))
        if response.HasField("error_response"):
            raise LookupError(f"{response.error_response.error_message} (code {response.error_response.error_code})")
        return response

    def fetch(self, **request):
        """Asks for files; keeps every file the answer carries; returns the first one's name."""
        protos = self.ask(**request).file_descriptor_response.file_descriptor_proto
        names = []
        for raw in protos:
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
            self.files.setdefault(fd.name, fd)
            names.append(fd.name)
        return names[0]

    def pool_with(self, name):
        """A descriptor pool holding `name` and, first, every file it imports (asked for when missing)."""
        pool = descriptor_pool.DescriptorPool()
        added = set()

        def add(file_name):
            if file_name in added:
                return
            if file_name not in self.files:
                self.fetch(file_by_filename=file_name)
            for dep in self.files[file_name].dependency:
                add(dep)
            pool.Add(self.files[file_name])
            added.add(file_name)

        add(name)
        return pool


def message_class(pool, descriptor):
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(descriptor)
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)


def main(argv):
    parser = argparse.ArgumentParser(prog="reflection_call.py", description="Call an edgeplane gRPC method from server reflection alone.")
    add_connection_flags(parser)
    parser.add_argument("--reflection-proto", default=DEFAULT_REFLECTION_PROTO, help="grpc/reflection/v1/reflection.proto, when grpcio-reflection is not installed")
    parser.add_argument("--list", action="store_true", help="list the services")
    parser.add_argument("--file", help="print a file's name, package, imports and messages as reflection serves it")
    parser.add_argument("--max-messages", type=int, default=0, help="a server stream: stop after this many messages")
    parser.add_argument("method", nargs="?", help="SERVICE/METHOD, e.g. edgeplane.v1.IntentService/ListPolicies")
    parser.add_argument("request", nargs="?", default="{}", help="the request as JSON (proto3 JSON mapping)")
    args = parser.parse_args(argv)
    check_connection_flags(parser, args)
    if not (args.list or args.file or args.method):
        parser.error("give --list, --file NAME or SERVICE/METHOD")
    if args.method and "/" not in args.method:
        parser.error(f"{args.method}: expected SERVICE/METHOD")

    channel = open_channel(args)
    work = tempfile.mkdtemp(prefix="edgeplane-reflect-")
    try:
        with channel:
            pb2, pb2_grpc = reflection_stubs(args.reflection_proto, work)
            reflection = Reflection(channel, pb2, pb2_grpc, args.timeout)
            try:
                if args.list:
                    print(json.dumps([s.name for s in reflection.ask(list_services="").list_services_response.service]))
                    return 0
                if args.file:
                    name = reflection.fetch(file_by_filename=args.file)
                    fd = reflection.files[name]
                    reflection.pool_with(name)  # every import resolves
                    print(json.dumps({"name": fd.name, "package": fd.package, "dependency": list(fd.dependency), "messageType": [m.name for m in fd.message_type]}))
                    return 0
                service_name, method_name = args.method.split("/", 1)
                pool = reflection.pool_with(reflection.fetch(file_containing_symbol=service_name))
                method = pool.FindServiceByName(service_name).FindMethodByName(method_name)
                request_class = message_class(pool, method.input_type)
                response_class = message_class(pool, method.output_type)
                request = json_format.Parse(args.request, request_class())
                path = f"/{service_name}/{method_name}"
                if method.client_streaming:
                    raise SystemExit("reflection_call: client-streaming methods are not supported")
                if method.server_streaming:
                    print_stream(channel.unary_stream(path, request_serializer=request_class.SerializeToString, response_deserializer=response_class.FromString)(request), args.max_messages)
                    return 0
                call = channel.unary_unary(path, request_serializer=request_class.SerializeToString, response_deserializer=response_class.FromString)
                print(json.dumps(json_format.MessageToDict(call(request, timeout=args.timeout)), indent=2))
                return 0
            except grpc.RpcError as err:
                print(json.dumps({"error": err.code().name, "message": err.details()}))
                return 1
            except (LookupError, KeyError, json_format.ParseError) as err:
                print(json.dumps({"error": "REFLECTION", "message": str(err)}))
                return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
