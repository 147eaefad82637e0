"""The live server the tests run against, from the environment the Rust test
(crates/cli/tests/python_sdk.rs) sets: RAVEN_SERVER (host:port of a `raven serve` with
the simulator and a SQLite store), RAVEN_BIN (the `raven` binary, for the CLI's exports)
and RAVEN_SCRATCH (a directory for files the Rust side reads back afterwards).

By hand: start `raven serve --rate 5000` and run
`RAVEN_SERVER=127.0.0.1:50051 RAVEN_BIN=$(which raven) RAVEN_SCRATCH=/tmp/x pytest python/tests`.
"""

import os
from pathlib import Path

import pytest

from raven_md import Client


def _env(name):
    value = os.environ.get(name)
    if not value:
        pytest.skip(f"{name} is not set: these tests run against a live raven server")
    return value


@pytest.fixture(scope="session")
def server():
    return _env("RAVEN_SERVER")


@pytest.fixture(scope="session")
def raven_bin():
    return _env("RAVEN_BIN")


@pytest.fixture(scope="session")
def scratch():
    path = Path(_env("RAVEN_SCRATCH"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture()
def client(server):
    with Client(server) as c:
        yield c
