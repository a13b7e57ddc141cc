"""Operations: created by every mutation, advanced by polls (or by real time), finished with an
optional error; zoneOperations / regionOperations / globalOperations get, wait, list, delete and
the aggregated list. A mixin of FakeCompute."""

from __future__ import annotations

import copy
import secrets
import time
from typing import Callable

from tests.fakes.compute_common import HTTP_REASONS, Ctx, OpError, OpFailure, Operation, not_found, rfc3339


class OperationsMixin:
    # ---------------------------------------------------------------- operations
    def _new_op(self, project: str, scope: tuple[str, str | None], op_type: str, target: dict | None, *,
                target_link: str | None = None, polls: int | None = None, user: str | None = None,
                on_done: Callable[[], None] | None = None, on_progress: Callable[[], None] | None = None,
                error: OpError | None = None) -> Operation:
        now = self.clock()
        name = f"operation-{int(now.timestamp() * 1000)}-{secrets.token_hex(7)[:13]}-{secrets.token_hex(4)}-{secrets.token_hex(4)}"
        kind, where = scope
        base = self._link(project, *(("global",) if kind == "global" else (kind, where)))
        body: dict = {
            "kind": "compute#operation",
            "id": self._new_id(),
            "name": name,
            "operationType": op_type,
            "targetLink": target_link or (target or {}).get("selfLink", ""),
            "targetId": (target or {}).get("id", self._new_id()),
            "status": "RUNNING",
            "user": user or self.client_email,
            "progress": 0,
            "insertTime": rfc3339(now),
            "startTime": rfc3339(now),
            "selfLink": f"{base}/operations/{name}",
        }
        if kind == "zones":
            body["zone"] = self._link(project, "zones", where or "")
        elif kind == "regions":
            body["region"] = self._link(project, "regions", where or "")
        op = Operation(body, self.operation_polls if polls is None else polls, scope, on_done, on_progress, error)
        if polls is None and self.operation_seconds > 0:
            op.ready_at = time.monotonic() + self.operation_seconds
            op.polls_left = 1
        self.operations[name] = op
        if op.polls_left <= 0:
            self._finish(op)
        return op

    def _finish(self, op: Operation) -> None:
        if op.body["status"] == "DONE":
            return
        if op.error is None and op.on_done:
            try:
                op.on_done()
            except OpFailure as f:
                op.error = f.error
        op.body.update(status="DONE", progress=100, endTime=self._ts())
        if op.error:
            op.body["error"] = op.error.body()
            if not self.omit_http_error_status:
                op.body["httpErrorStatusCode"] = op.error.http_status
                op.body["httpErrorMessage"] = HTTP_REASONS.get(op.error.http_status, "ERROR")

    def _poll(self, op: Operation) -> None:
        if op.body["status"] == "DONE":
            return
        if op.ready_at is not None:
            if time.monotonic() >= op.ready_at:
                self._finish(op)
            elif op.on_progress:
                op.on_progress()
            return
        op.polls_left -= 1
        if op.polls_left <= 0:
            self._finish(op)
        elif op.on_progress:
            op.on_progress()

    def _advance_target(self, target_link: str) -> None:
        """Reading an instance counts as a poll of its pending operation, so code that polls the
        instance (not the operation) still sees PROVISIONING -> STAGING -> RUNNING."""
        for op in list(self.operations.values()):
            if op.body["status"] != "DONE" and op.body["targetLink"] == target_link:
                self._poll(op)

    def _op_response(self, op: Operation) -> tuple[int, dict]:
        return 200, copy.deepcopy(op.body)

    def _find_op(self, ctx: Ctx) -> Operation:
        name = ctx.params["operation"]
        op = self.operations.get(name)
        kind = {"zoneOperations": "zones", "regionOperations": "regions", "globalOperations": "global"}[ctx.route.resource]
        where = ctx.params.get("zone") or ctx.params.get("region")
        if op is None or op.scope != (kind, where):
            scope = "global" if kind == "global" else f"{kind}/{where}"
            raise not_found(f"projects/{ctx.project}/{scope}/operations/{name}")
        return op

    def _op_get(self, ctx: Ctx) -> tuple[int, dict]:
        op = self._find_op(ctx)
        self._poll(op)
        return self._op_response(op)

    def _op_wait(self, ctx: Ctx) -> tuple[int, dict]:
        # The real wait blocks up to ~2 minutes; here each wait is one poll, so a slow operation
        # (operation_polls > 1) makes the caller loop, as it must when the real wait times out.
        op = self._find_op(ctx)
        self._poll(op)
        return self._op_response(op)

    def _op_list(self, ctx: Ctx) -> tuple[int, dict]:
        kind = {"zoneOperations": "zones", "regionOperations": "regions", "globalOperations": "global"}[ctx.route.resource]
        where = ctx.params.get("zone") or ctx.params.get("region")
        items = [op.body for op in self.operations.values() if op.scope == (kind, where)]
        base = self._link(ctx.project, *(("global",) if kind == "global" else (kind, where or "")))
        return self._list("compute#operationList", items, ctx, base + "/operations")

    def _op_delete(self, ctx: Ctx) -> tuple[int, dict]:
        op = self._find_op(ctx)
        self.operations.pop(op.body["name"], None)
        return 200, {}

    def _op_aggregated(self, ctx: Ctx) -> tuple[int, dict]:
        by_scope: dict[str, list[dict]] = {}
        for op in self.operations.values():
            kind, where = op.scope
            by_scope.setdefault("global" if kind == "global" else f"{kind}/{where}", []).append(op.body)
        return self._aggregated("compute#operationAggregatedList", "operations", by_scope, ctx, "operations", prefixed=True)
