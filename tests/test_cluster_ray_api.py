"""Ray's job API right after `ray start` (or on a busy head) can answer 500 while its job agent is
not up yet: seen in this suite when two runs shared the machine. gcpdl retries a refused submit
under a deadline, with one submission id, so a retry never starts the job twice."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

AGENT_NOT_READY = b"Traceback (most recent call last): ... aiohttp.client_exceptions.ClientConnectorError"


class _RayHead(BaseHTTPRequestHandler):
    answers: list[tuple[int, bytes]] = []
    bodies: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        status, out = type(self).answers.pop(0) if type(self).answers else (200, b"")
        if status == 200:
            out = json.dumps({"submission_id": body.get("submission_id"), "job_id": None}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def _serve(answers: list[tuple[int, bytes]]):
    handler = type("Head", (_RayHead,), {"answers": list(answers), "bodies": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler


def test_a_submit_refused_while_the_job_agent_starts_is_retried_with_one_submission_id():
    from gcpdl.cluster.ray import JobApi

    server, head = _serve([(500, AGENT_NOT_READY), (500, AGENT_NOT_READY)])
    try:
        api = JobApi(f"http://127.0.0.1:{server.server_address[1]}", retry_pause=0.01)
        job = api.submit("python job.py", None)
    finally:
        server.shutdown()
    assert len(head.bodies) == 3
    assert len({b["submission_id"] for b in head.bodies}) == 1 and job == head.bodies[0]["submission_id"]


def test_a_retry_that_finds_the_job_already_submitted_takes_it():
    from gcpdl.cluster.ray import JobApi

    server, head = _serve([(500, AGENT_NOT_READY), (400, b"Job with submission_id gcpdl-x already exists.")])
    try:
        job = JobApi(f"http://127.0.0.1:{server.server_address[1]}", retry_pause=0.01).submit("python job.py", None)
    finally:
        server.shutdown()
    assert job == head.bodies[0]["submission_id"]


def test_a_submit_refused_for_good_is_one_error_line():
    import pytest

    from gcpdl.cluster.ray import JobApi
    from gcpdl.errors import GcpdlError

    server, head = _serve([(400, b"bad entrypoint")])
    try:
        with pytest.raises(GcpdlError, match=r"^Ray refused the job \(HTTP 400\): bad entrypoint$"):
            JobApi(f"http://127.0.0.1:{server.server_address[1]}", retry_pause=0.01).submit("python job.py", None)
    finally:
        server.shutdown()
    assert len(head.bodies) == 1
