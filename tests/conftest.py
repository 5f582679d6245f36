"""pytest configuration: say which backend and which files are under test."""

from __future__ import annotations

import os

import cclb_wire


def pytest_report_header(config):
    return f"cclb_wire {cclb_wire.__version__}: backend={cclb_wire.BACKEND} from {os.path.dirname(cclb_wire.__file__)}"


def pytest_sessionstart(session):
    expected = os.environ.get("CCLB_WIRE_EXPECT_BACKEND")
    if expected and expected != cclb_wire.BACKEND:
        raise RuntimeError(f"CCLB_WIRE_EXPECT_BACKEND={expected} but the {cclb_wire.BACKEND} backend loaded")
