"""Test bed. Real services (fake Compute server, GCS stand-ins, sshd, jupyter server) are
session-scoped and live in tests/fixtures/*; this file isolates every test from the developer's
real environment: HOME, config dirs, Google/gcloud env vars, the GCE metadata server."""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.isolation",
    "tests.fixtures.jupyter",
    "tests.fixtures.compute",
    "tests.fixtures.ssh",
    "tests.fixtures.oslogin",
    "tests.fixtures.storage",
    "tests.fixtures.guestvm",
    "tests.fixtures.cluster",
]
