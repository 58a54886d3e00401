#!/usr/bin/python3
"""A small edgeplane client in Python: apply a policy and list policies over gRPC.

It shows that the wire contract in proto/ is all another language needs. Python stubs are not
committed: they are generated at start-up into a temporary directory from
proto/edgeplane/v1/*.proto and proto/google/rpc/*.proto with grpc_tools (Debian:
python3-grpcio, python3-grpc-tools), then imported from there.

Usage:
  edgeplane_client.py --server HOST:PORT apply [-f POLICY.json | --name NAME]
  edgeplane_client.py --server HOST:PORT list [-l SELECTOR | --selector-file FILE]
  edgeplane_client.py --server HOST:PORT watch-nodes [-l SELECTOR] [--initial] [--count N]

Output is JSON on stdout (the proto3 JSON mapping). When the controller rejects a request
with INVALID_ARGUMENT, the google.rpc.Status in the `grpc-status-details-bin` trailer is
decoded and its google.rpc.BadRequest field violations are printed as JSON on stdout.

Exit codes: 0 success, 1 the controller refused the request or could not be reached,
2 usage error.
"""

import argparse
import glob
import importlib
import json
import os
import re
import shutil
import sys
import tempfile

import grpc
from google.protobuf import json_format

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
STATUS_DETAILS_KEY = "grpc-status-details-bin"


# proto3 `optional` (protoc >= 3.15) spelled as the synthetic oneof protoc itself makes of it:
# Debian's python3-grpc-tools bundles libprotoc 3.5.1, which predates the keyword. The wire
# format and field presence are the same.
OPTIONAL_FIELD = re.compile(r"^(\s*)optional\s+(\S+)\s+(\w+)\s*=\s*(\d+)\s*;", re.MULTILINE)


def generate_stubs(proto_root, work_dir):
    """Runs protoc (from grpc_tools) over the edgeplane and google.rpc protos; returns the output folder."""
    from grpc_tools import protoc

    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    src = os.path.join(work_dir, "src")
    out = os.path.join(work_dir, "out")
    os.makedirs(out)
    rel = []
    for folder in (os.path.join("edgeplane", "v1"), os.path.join("google", "rpc")):
        for path in sorted(glob.glob(os.path.join(proto_root, folder, "*.proto"))):
            name = os.path.relpath(path, proto_root)
            os.makedirs(os.path.join(src, folder), exist_ok=True)
            with open(path, encoding="utf-8") as f:
                text = OPTIONAL_FIELD.sub(r"\1oneof _\3 { \2 \3 = \4; }", f.read())
            with open(os.path.join(src, name), "w", encoding="utf-8") as f:
                f.write(text)
            rel.append(name)
    if not rel:
        raise SystemExit(f"edgeplane_client: no .proto files under {proto_root}")
    args = ["grpc_tools.protoc", f"-I{src}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}", *rel]
    if protoc.main(args) != 0:
        raise SystemExit(f"edgeplane_client: protoc failed on {proto_root}")
    return out


class Stubs:
    """The generated modules, imported from a temporary directory that close() removes."""

    def __init__(self, proto_root):
        self.dir = tempfile.mkdtemp(prefix="edgeplane-py-")
        try:
            out = generate_stubs(proto_root, self.dir)
            # `google` is a namespace package (google.protobuf comes from the system), so the
            # generated google/rpc joins it once the directory is on sys.path.
            sys.path.insert(0, out)
            importlib.invalidate_caches()
            self.policy = importlib.import_module("edgeplane.v1.policy_pb2")
            self.intent = importlib.import_module("edgeplane.v1.intent_service_pb2")
            self.intent_grpc = importlib.import_module("edgeplane.v1.intent_service_pb2_grpc")
            self.fleet = importlib.import_module("edgeplane.v1.fleet_service_pb2")
            self.fleet_grpc = importlib.import_module("edgeplane.v1.fleet_service_pb2_grpc")
            self.connections = importlib.import_module("edgeplane.v1.connections_pb2")
            self.service = importlib.import_module("edgeplane.v1.service_pb2")
            self.status = importlib.import_module("google.rpc.status_pb2")
            self.error_details = importlib.import_module("google.rpc.error_details_pb2")
        except BaseException:
            self.close()
            raise

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def example_policy(name):
    """A policy for role=edge nodes with an IPv6 and an IPv4 rule, in the proto3 JSON mapping."""
    return {
        "metadata": {"name": name, "labels": {"client": "python"}},
        "spec": {
            "description": "Applied by the Python client.",
            "nodeSelector": {"matchLabels": {"role": "edge"}},
            "defaultAction": "ACTION_ALLOW",
            "rules": [
                {
                    "priority": 10,
                    "name": "no-telnet-v6",
                    "sourceCidrs": ["2001:db8::/32"],
                    "protocol": "PROTOCOL_TCP",
                    "destinationPorts": [{"first": 23, "last": 23}],
                    "action": "ACTION_DENY",
                },
                {
                    "priority": 20,
                    "name": "no-telnet-v4",
                    "sourceCidrs": ["198.51.100.0/24"],
                    "protocol": "PROTOCOL_TCP",
                    "destinationPorts": [{"first": 23, "last": 23}],
                    "action": "ACTION_DENY",
                },
            ],
        },
    }


def example_service(name):
    """A load-balanced service for role=edge nodes, in the proto3 JSON mapping. A backend's
    weight is a google.protobuf.UInt32Value: left out it means 1, and 0 drains the backend (no
    new flows), which a plain uint32 could not tell apart."""
    return {
        "metadata": {"name": name, "labels": {"client": "python"}},
        "spec": {
            "description": "Applied by the Python client.",
            "nodeSelector": {"matchLabels": {"role": "edge"}},
            "vip": "203.0.113.10",
            "protocol": "PROTOCOL_TCP",
            "port": 443,
            "backends": [
                {"address": "10.0.0.11", "port": 8443, "weight": 3},
                {"address": "10.0.0.12", "port": 8443},
                {"address": "10.0.0.13", "port": 8443, "weight": 0},
            ],
            "healthCheck": {"type": "TYPE_HTTP", "httpPath": "/healthz", "interval": "2s"},
        },
    }


def add_connection_flags(parser):
    """--server, --timeout and the TLS flags, as every client here takes them."""
    parser.add_argument("--server", default=os.environ.get("EDGEPLANE_SERVER", "127.0.0.1:7443"), help="controller address HOST:PORT")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline of each unary call, seconds")
    parser.add_argument("--tls-ca", default=os.environ.get("EDGEPLANE_TLS_CA"), help="CA certificate (PEM) the controller's certificate chains to (EDGEPLANE_TLS_CA)")
    parser.add_argument("--tls-cert", default=os.environ.get("EDGEPLANE_TLS_CERT"), help="client certificate (PEM), e.g. from edgeplane cert issue (EDGEPLANE_TLS_CERT)")
    parser.add_argument("--tls-key", default=os.environ.get("EDGEPLANE_TLS_KEY"), help="its private key (PEM) (EDGEPLANE_TLS_KEY)")
    parser.add_argument("--insecure", action="store_true", help="plaintext, for a controller started with --insecure on loopback")


def check_connection_flags(parser, args):
    """Mutual TLS unless --insecure: never a silent fall back to plaintext."""
    if not args.insecure and not (args.tls_ca and args.tls_cert and args.tls_key):
        parser.error("give --tls-ca, --tls-cert and --tls-key (or EDGEPLANE_TLS_*), or --insecure for a plaintext loopback controller")


def open_channel(args):
    """A channel to args.server: mutual TLS with the given files, or plaintext with --insecure."""
    if args.insecure:
        return grpc.insecure_channel(args.server)

    def read(path):
        with open(path, "rb") as f:
            return f.read()
    return grpc.secure_channel(args.server, grpc.ssl_channel_credentials(root_certificates=read(args.tls_ca), private_key=read(args.tls_key), certificate_chain=read(args.tls_cert)))


def print_stream(stream, count=0):
    """Prints a server stream's messages as JSON lines until it ends or `count` (0: no limit) arrived."""
    seen = 0
    try:
        for message in stream:
            print(json.dumps(json_format.MessageToDict(message)), flush=True)
            seen += 1
            if count and seen >= count:
                break
    finally:
        stream.cancel()


def to_json(message):
    return json_format.MessageToDict(message)


def describe_error(stubs, err):
    """A JSON-able description of a failed call, with field violations when there are any."""
    out = {"error": err.code().name, "message": err.details()}
    for key, value in err.trailing_metadata() or ():
        if key != STATUS_DETAILS_KEY:
            continue
        status = stubs.status.Status.FromString(value)
        violations = []
        for detail in status.details:
            bad = stubs.error_details.BadRequest()
            if detail.Is(bad.DESCRIPTOR) and detail.Unpack(bad):
                violations += [{"field": v.field, "description": v.description, "reason": v.reason} for v in bad.field_violations]
        out["fieldViolations"] = violations
    return out


def main(argv):
    parser = argparse.ArgumentParser(prog="edgeplane_client.py", description="Apply and list edgeplane policies, apply services, and list a node's connections, over gRPC with mutual TLS (the controller's default).")
    add_connection_flags(parser)
    parser.add_argument("--proto-root", default=DEFAULT_PROTO_ROOT, help="folder holding edgeplane/v1 and google/rpc protos")
    sub = parser.add_subparsers(dest="command", required=True)
    apply = sub.add_parser("apply", help="apply a policy")
    source = apply.add_mutually_exclusive_group()
    source.add_argument("-f", "--file", help="policy as JSON (proto3 JSON mapping); default: the built-in example")
    source.add_argument("--name", default="python-example", help="name of the built-in example policy")
    apply_service = sub.add_parser("apply-service", help="apply a service (a VIP load-balanced over weighted backends)")
    service_source = apply_service.add_mutually_exclusive_group()
    service_source.add_argument("-f", "--file", help="service as JSON (proto3 JSON mapping); default: the built-in example")
    service_source.add_argument("--name", default="python-service", help="name of the built-in example service")
    listing = sub.add_parser("list", help="list policies")
    selector = listing.add_mutually_exclusive_group()
    selector.add_argument("-l", "--selector", default="", help="label selector")
    selector.add_argument("--selector-file", help="read the label selector from a file (for selectors longer than a command line)")
    watch = sub.add_parser("watch-nodes", help="follow node changes (FleetService.WatchNodes), one JSON object per line")
    watch.add_argument("-l", "--selector", default="", help="label selector")
    watch.add_argument("--initial", action="store_true", help="send the current nodes first (as ADDED)")
    watch.add_argument("--count", type=int, default=0, help="stop after this many events (default: follow until interrupted)")
    conntrack = sub.add_parser("conntrack", help="list (or count) a node's tracked connections, through the controller")
    conntrack.add_argument("node", help="the node's name")
    conntrack.add_argument("--count", action="store_true", help="only count the matching entries")
    conntrack.add_argument("--proto", choices=["tcp", "udp", "icmp", "icmpv6"], help="only this protocol")
    conntrack.add_argument("--address", default="", help="an address or CIDR the source or destination is in")
    conntrack.add_argument("--port", type=int, default=0, help="the source or destination port")
    conntrack.add_argument("--limit", type=int, default=0, help="most entries to return (default 1000, at most 10000)")
    args = parser.parse_args(argv)
    check_connection_flags(parser, args)

    if args.command == "apply" and args.file:
        with open(args.file, encoding="utf-8") as f:
            policy_json = json.load(f)
    elif args.command == "apply":
        policy_json = example_policy(args.name)
    if args.command == "apply-service" and args.file:
        with open(args.file, encoding="utf-8") as f:
            service_json = json.load(f)
    elif args.command == "apply-service":
        service_json = example_service(args.name)
    if args.command == "list" and args.selector_file:
        with open(args.selector_file, encoding="utf-8") as f:
            args.selector = f.read()

    channel = open_channel(args)
    stubs = Stubs(args.proto_root)
    try:
        with channel:
            intent = stubs.intent_grpc.IntentServiceStub(channel)
            try:
                if args.command == "apply":
                    policy = json_format.ParseDict(policy_json, stubs.policy.Policy())
                    res = intent.ApplyPolicy(stubs.intent.ApplyPolicyRequest(policy=policy), timeout=args.timeout)
                elif args.command == "apply-service":
                    service = json_format.ParseDict(service_json, stubs.service.Service())
                    res = intent.ApplyService(stubs.intent.ApplyServiceRequest(service=service), timeout=args.timeout)
                elif args.command == "watch-nodes":
                    # A stream has no deadline of its own: it follows until --count events or Ctrl-C.
                    fleet = stubs.fleet_grpc.FleetServiceStub(channel)
                    print_stream(fleet.WatchNodes(stubs.fleet.WatchNodesRequest(label_selector=args.selector, send_initial=args.initial)), args.count)
                    return 0
                elif args.command == "conntrack":
                    fleet = stubs.fleet_grpc.FleetServiceStub(channel)
                    connection_filter = stubs.connections.ConnectionFilter(address=args.address, port=args.port)
                    if args.proto:
                        connection_filter.protocol = stubs.policy.Protocol.Value("PROTOCOL_" + args.proto.upper())
                    req = stubs.fleet.ListConnectionsRequest(node=args.node, filter=connection_filter, limit=args.limit, count_only=args.count)
                    res = fleet.ListConnections(req, timeout=args.timeout)
                else:
                    res = intent.ListPolicies(stubs.intent.ListPoliciesRequest(page_size=1000, label_selector=args.selector), timeout=args.timeout)
            except grpc.RpcError as err:
                print(json.dumps(describe_error(stubs, err), indent=2))
                return 1
            print(json.dumps(to_json(res), indent=2))
            return 0
    finally:
        stubs.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
