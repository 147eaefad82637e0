"""TLS interop with the stock Python gRPC stack (grpcio). Run by tests/tls.rs against a
live server that requires client certificates:

    python tls.py 127.0.0.1:PORT CA.pem CLIENT.pem CLIENT.key

With the client certificate it lists the instruments; without one it must be refused.
Exits non-zero with a message otherwise.
"""

import sys

import grpc

from raven.v1 import raven_pb2 as pb
from raven.v1 import raven_pb2_grpc as rpc


def read(path):
    with open(path, "rb") as f:
        return f.read()


def channel(addr, ca, cert=None, key=None):
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(ca),
        private_key=read(key) if key else None,
        certificate_chain=read(cert) if cert else None,
    )
    # The server's certificate names localhost; we dial its address.
    return grpc.secure_channel(addr, credentials, options=[("grpc.ssl_target_name_override", "localhost")])


def main(addr, ca, cert, key):
    stub = rpc.MarketStub(channel(addr, ca, cert, key))
    names = [i.name for i in stub.ListInstruments(pb.ListInstrumentsRequest(), timeout=10).instruments]
    assert len(names) == 8, names

    anonymous = rpc.MarketStub(channel(addr, ca))
    try:
        anonymous.ListInstruments(pb.ListInstrumentsRequest(), timeout=10)
        raise AssertionError("a client without a certificate was served")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAVAILABLE, e.code()
    print(f"mutual TLS: {len(names)} instruments with a client certificate, refused without one")


if __name__ == "__main__":
    main(*sys.argv[1:5])
