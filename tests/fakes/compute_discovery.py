"""The Compute v1 discovery document as the fake server's source of truth.

Routing uses each method's ``flatPath`` and ``httpMethod`` so an unknown route 404s like the real
API, and every request body is checked against the schema named by ``request.$ref``: unknown
fields, wrong JSON types and values outside an enum are rejected with the real 400 shape.

The document is 4.9 MB; it is parsed and indexed once per process (``discovery()``).
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any


def discovery_path() -> str:
    import googleapiclient

    return os.path.join(os.path.dirname(googleapiclient.__file__), "discovery_cache", "documents", "compute.v1.json")


@dataclass(frozen=True)
class Route:
    id: str  # e.g. "compute.instances.insert"
    resource: str  # "instances"
    method: str  # "insert"
    http_method: str
    flat_path: str
    regex: re.Pattern
    params: tuple[str, ...]  # path parameters in order
    request_schema: str | None
    query_params: frozenset[str]
    specificity: tuple[int, int]


@dataclass
class Discovery:
    doc: dict
    routes: list[Route] = field(default_factory=list)

    @property
    def schemas(self) -> dict:
        return self.doc["schemas"]

    def match(self, http_method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        """``path`` is relative to /compute/v1/. Most specific route wins (literals beat params)."""
        for route in self.routes:
            if route.http_method != http_method:
                continue
            m = route.regex.fullmatch(path)
            if m:
                return route, dict(zip(route.params, m.groups()))
        return None

    @property
    def system_params(self) -> frozenset[str]:
        """Query parameters every method accepts (alt, fields, key, prettyPrint...)."""
        return frozenset(self.doc.get("parameters", {})) | {"$alt", "$fields", "$prettyPrint", "$callback"}

    def path_exists(self, path: str) -> bool:
        return any(r.regex.fullmatch(path) for r in self.routes)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@lru_cache(maxsize=1)
def discovery() -> Discovery:
    with open(discovery_path(), encoding="utf-8") as f:
        doc = json.load(f)
    disc = Discovery(doc)
    for res_name, res in doc["resources"].items():
        for meth_name, meth in res.get("methods", {}).items():
            flat = meth.get("flatPath") or meth["path"]
            params: list[str] = []
            parts = []
            literals = 0
            for seg in flat.split("/"):
                m = re.fullmatch(r"\{\+?(\w+)\}", seg)
                if m:
                    params.append(m.group(1))
                    parts.append("([^/]+)")
                else:
                    literals += 1
                    parts.append(re.escape(seg))
            query = {k for k, v in meth.get("parameters", {}).items() if v.get("location") == "query"}
            # This revision no longer declares returnPartialSuccess, yet 52 method descriptions
            # tell callers to set it and the API takes it: accept it where the text names it.
            if "`returnPartialSuccess`" in meth.get("description", ""):
                query.add("returnPartialSuccess")
            disc.routes.append(
                Route(
                    id=meth["id"],
                    resource=res_name,
                    method=meth_name,
                    http_method=meth["httpMethod"],
                    flat_path=flat,
                    regex=re.compile("/".join(parts)),
                    params=tuple(params),
                    request_schema=(meth.get("request") or {}).get("$ref"),
                    query_params=frozenset(query),
                    specificity=(literals, len(params)),
                )
            )
    # literals first: "global/images/family/{family}" must beat "global/images/{image}/..."
    disc.routes.sort(key=lambda r: (-r.specificity[0], -r.specificity[1]))
    return disc


# --- body validation --------------------------------------------------------------------------

_INT_RE = re.compile(r"-?\d+")
_LIMITS = {
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


@dataclass
class Violation:
    field: str  # proto-style path, e.g. "instance.scheduling.on_host_maintenance"
    message: str  # the text the real API puts in error.message


def validate_body(body: Any, schema_name: str, root: str) -> list[Violation]:
    """Check ``body`` against the discovery schema like the API's JSON parser does.

    ``root`` is the request field the body binds to (the real messages say ``at 'instance'``).
    """
    out: list[Violation] = []
    _check_object(discovery().schemas, body, {"$ref": schema_name}, root, root, out)
    return out


def _type_name(schema_name: str) -> str:
    return f"type.googleapis.com/google.cloud.compute.v1.{schema_name}"


def _check_object(schemas: dict, value: Any, prop: dict, path: str, proto_path: str, out: list[Violation]) -> None:
    if "$ref" in prop:
        name = prop["$ref"]
        schema = schemas[name]
    else:
        name = None
        schema = prop
    typ = schema.get("type")
    if typ == "object" and "properties" not in schema and "additionalProperties" in schema:
        if not isinstance(value, dict):
            out.append(Violation(proto_path, f"Invalid value at '{proto_path}', {json.dumps(value)}"))
            return
        for k, v in value.items():
            _check_value(schemas, v, schema["additionalProperties"], f"{path}[{json.dumps(k)}]", f"{proto_path}[{k}]", out)
        return
    if typ == "object" or "properties" in schema:
        if not isinstance(value, dict):
            tn = f" ({_type_name(name)})" if name else ""
            out.append(Violation(proto_path, f"Invalid value at '{proto_path}'{tn}, {json.dumps(value)}"))
            return
        props = schema.get("properties", {})
        for k, v in value.items():
            if k not in props:
                out.append(
                    Violation(proto_path, f'Invalid JSON payload received. Unknown name "{k}" at \'{proto_path}\': Cannot find field.')
                )
                continue
            _check_value(schemas, v, props[k], f"{path}.{k}", f"{proto_path}.{_snake(k)}", out)
        return
    _check_value(schemas, value, schema, path, proto_path, out)


def _check_value(schemas: dict, value: Any, prop: dict, path: str, proto_path: str, out: list[Violation]) -> None:
    if value is None:  # JSON null is accepted for any field (it means "unset")
        return
    if "$ref" in prop:
        _check_object(schemas, value, prop, path, proto_path, out)
        return
    typ, fmt = prop.get("type"), prop.get("format")

    def bad(kind: str = "") -> None:
        suffix = f" ({kind})" if kind else ""
        out.append(Violation(proto_path, f"Invalid value at '{proto_path}'{suffix}, {json.dumps(value)}"))

    if typ == "array":
        if not isinstance(value, list):
            bad()
            return
        for i, item in enumerate(value):
            _check_value(schemas, item, prop.get("items", {}), f"{path}[{i}]", f"{proto_path}[{i}]", out)
    elif typ == "object":
        _check_object(schemas, value, prop, path, proto_path, out)
    elif typ == "boolean":
        if not isinstance(value, bool):
            bad("TYPE_BOOL")
    elif typ == "integer" or (typ == "string" and fmt in ("int64", "uint64")):
        # proto3 JSON: 64-bit ints should arrive as strings, but numbers are accepted too
        kind = "TYPE_" + (fmt or "int32").upper()
        if isinstance(value, bool):
            bad(kind)
            return
        if isinstance(value, str):
            if not _INT_RE.fullmatch(value):
                bad(kind)
                return
            num = int(value)
        elif isinstance(value, int):
            num = value
        elif isinstance(value, float) and value.is_integer():
            num = int(value)
        else:
            bad(kind)
            return
        lo, hi = _LIMITS.get(fmt or "int32", _LIMITS["int64"])
        if not lo <= num <= hi:
            bad(kind)
    elif typ == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            bad("TYPE_DOUBLE")
        elif isinstance(value, str):
            try:
                float(value)
            except ValueError:
                bad("TYPE_DOUBLE")
    elif typ == "string":
        if not isinstance(value, str):
            bad("TYPE_STRING")
            return
        if "enum" in prop and value not in prop["enum"]:
            out.append(Violation(proto_path, f"Invalid value at '{proto_path}' (TYPE_ENUM), {json.dumps(value)}"))
        elif fmt == "byte":
            try:
                base64.b64decode(value.replace("-", "+").replace("_", "/") + "==", validate=False)
            except ValueError:
                bad("TYPE_BYTES")
    # "any" and unknown types pass: the API accepts any JSON there
