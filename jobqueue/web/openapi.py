"""The OpenAPI document of `create_app()`: FastAPI's, completed with what it cannot see.

The enqueue and replay routes read their bodies by hand (web/routes_jobs.py says why), so FastAPI
knows their request bodies only as the inline schemas in `openapi_extra`, which keep a host app's
document valid when `router()` is mounted there. This document names them instead, as components:

- `JobRequest`: the enqueue request with any type and an object payload;
- one `Job_<type>` per registered job type, with that type's payload model as `payload` (a type
  without a model takes any object) and its registration defaults in the description;
- `EnqueueRequest`: `oneOf` those, discriminated by `type` (the body of `POST /api/jobs`);
- `BatchRequest` (`POST /api/jobs/batch`) and `ReplayRequest` (`POST /api/dlq/replay`).

The registry is resolved when the document is first asked for (`Resources.job_types()`: imports
the job modules, connects to nothing). Should that fail, the document falls back to `JobRequest`
for the enqueue body, is not cached, and the failure is logged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field, create_model
from pydantic.json_schema import models_json_schema

from jobqueue.models import JobRequest

from . import routes_admin, routes_jobs
from .deps import Resources
from .mount import effective_routes

if TYPE_CHECKING:
    from jobqueue.registry import JobType, Registry

log = logging.getLogger("jobqueue.api")

REF = "#/components/schemas/{model}"
TAGS = [
    {"name": "jobs", "description": "Enqueue, read, list, cancel and retry jobs"},
    {"name": "workers", "description": "One bounded drain per call (cron, QStash, kicks)"},
    {"name": "dlq", "description": "The dead-letter queue: failed jobs"},
    {"name": "queues", "description": "Counts per queue and state; pause and resume"},
    {"name": "metrics", "description": "Queue health, as JSON or in the Prometheus text format"},
    {"name": "health", "description": "Liveness of Postgres and Redis; no credentials"},
]


def install_openapi(app: FastAPI, res: Resources) -> None:
    """Make `app.openapi()` (what `/api/openapi.json` answers) this module's document."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc, complete = build_document(app, res)
            if not complete:
                return doc
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_document(app: FastAPI, res: Resources) -> tuple[dict[str, Any], bool]:
    """The document, and whether it describes every job type (False: the registry failed)."""
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes, tags=TAGS)
    registry: Registry | None
    try:
        registry = res.job_types()
    except Exception as e:  # an import error in a job module: document what we can, say why
        log.warning("openapi: the job types are not documented: %s: %s", type(e).__name__, e)
        registry = None
    components = request_components(registry)
    add_components(doc, components)
    bodies: dict[Callable[..., Any], str] = {
        routes_jobs.enqueue: "EnqueueRequest",
        routes_jobs.enqueue_batch: "BatchRequest",
        routes_admin.replay: "ReplayRequest",
    }
    examples = job_examples(registry, doc["components"]["schemas"]) if registry is not None else {}
    batch = {"value": {"jobs": [e["value"] for e in examples.values()][:2]}} if examples else None
    for route in effective_routes(app.routes):
        name = bodies.get(getattr(route, "endpoint", None))  # type: ignore[arg-type]
        path = getattr(route, "path_format", None)
        if name is None or path is None:
            continue
        for method in getattr(route, "methods", None) or ():
            operation = doc["paths"].get(path, {}).get(method.lower())
            if operation is None:
                continue
            media: dict[str, Any] = {"schema": {"$ref": REF.format(model=name)}}
            # Swagger UI leaves a discriminator's property out of the examples it makes up, so
            # each job type gets one of its own (a dropdown on the enqueue operation).
            if name == "EnqueueRequest" and examples:
                media["examples"] = examples
            elif name == "BatchRequest" and batch:
                media["examples"] = {"a batch": batch}
            operation["requestBody"] = {"required": True, "content": {"application/json": media}}
    return doc, registry is not None


# --- the request components ------------------------------------------------------------------------


def _component_name(type_name: str, taken: set[str]) -> str:
    name = "Job_" + re.sub(r"[^A-Za-z0-9]+", "_", type_name).strip("_")
    unique, n = name, 2
    while unique in taken:
        unique, n = f"{name}_{n}", n + 1
    taken.add(unique)
    return unique


def _defaults(jt: JobType) -> str:
    parts = [f"queue `{jt.queue}`"]
    if jt.max_attempts is not None:
        parts.append(f"max_attempts {jt.max_attempts}")
    if jt.timeout_ms is not None:
        parts.append(f"timeout_ms {jt.timeout_ms}")
    if jt.backoff is not None:
        b = jt.backoff
        parts.append(f"{b.type} backoff from {b.delay_ms} ms (at most {b.max_delay_ms} ms, jitter {b.jitter:g})")
    return ", ".join(parts)


def job_model(jt: JobType, model_name: str) -> type[BaseModel]:
    """The enqueue request for one job type: `type` fixed to its name, `payload` its model."""
    payload: Any = jt.model if jt.model is not None else dict[str, Any]
    required = jt.model is not None and any(f.is_required() for f in jt.model.model_fields.values())
    payload_field = Field() if required else Field(default_factory=dict)
    model: type[BaseModel] = create_model(
        model_name,
        __base__=JobRequest,
        __doc__=f"A `{jt.name}` job. Defaults for this type: {_defaults(jt)}.",
        type=(Literal[jt.name], Field()),  # type: ignore[valid-type, arg-type]
        payload=(payload, payload_field),
    )
    return model


def request_components(registry: Registry | None) -> dict[str, Any]:
    """The request bodies' schemas, by component name, with refs to each other as components."""
    per_type: dict[str, type[BaseModel]] = {}
    taken = {"JobRequest", "ReplayRequest", "EnqueueRequest", "BatchRequest"}
    if registry is not None:
        for name in registry.names:
            per_type[name] = job_model(registry.get(name), _component_name(name, taken))
    models: list[type[BaseModel]] = [JobRequest, routes_admin.ReplayRequest, *per_type.values()]
    refs, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    schemas: dict[str, Any] = defs.get("$defs", {})
    for name, model in per_type.items():
        schemas[_ref_name(refs[(model, "validation")])]["title"] = f"{name} job"
    if per_type:
        mapping = {name: refs[(model, "validation")]["$ref"] for name, model in per_type.items()}
        enqueue: dict[str, Any] = {
            "oneOf": [{"$ref": ref} for ref in mapping.values()],
            "discriminator": {"propertyName": "type", "mapping": mapping},
        }
    else:
        enqueue = {"allOf": [refs[(JobRequest, "validation")]]}
    schemas["EnqueueRequest"] = {
        "title": "EnqueueRequest",
        "description": "One job: `type` chooses the payload's schema (one per registered job type).",
        **enqueue,
    }
    schemas["BatchRequest"] = {
        "title": "BatchRequest",
        "description": f"Up to {routes_jobs.MAX_BATCH} jobs, validated all or nothing (a 422 names `jobs.N`).",
        "type": "object",
        "properties": {
            "jobs": {
                "type": "array",
                "items": {"$ref": REF.format(model="EnqueueRequest")},
                "maxItems": routes_jobs.MAX_BATCH,
            }
        },
        "required": ["jobs"],
        "additionalProperties": False,
    }
    return schemas


def job_examples(registry: Registry, schemas: dict[str, Any]) -> dict[str, Any]:
    """One example request per job type: its payload model's first declared example (pydantic's
    `json_schema_extra={"examples": [...]}`), else a payload made up from its schema."""
    out: dict[str, Any] = {}
    for name in registry.names:
        jt = registry.get(name)
        payload: Any = {}
        if jt.model is not None:
            schema = jt.model.model_json_schema(ref_template=REF)
            declared = schema.get("examples")
            payload = declared[0] if isinstance(declared, list) and declared else sample(schema, schemas)
        out[name] = {"summary": f"{name} job", "value": {"type": name, "payload": payload}}
    return out


def sample(schema: Any, schemas: dict[str, Any], depth: int = 0) -> Any:
    """A value for `schema`: its example, default, const or first enum value, else a
    placeholder of its type; objects get their required properties only."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    if "$ref" in schema:
        return sample(schemas.get(_ref_name(schema), {}), schemas, depth + 1)
    for key in ("example", "default", "const"):
        if key in schema:
            return schema[key]
    for key in ("examples", "enum"):
        if schema.get(key):
            return schema[key][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = [o for o in schema.get(key, []) if o.get("type") != "null"]
        if options:
            return sample(options[0], schemas, depth + 1)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {k: sample(props.get(k, {}), schemas, depth + 1) for k in schema.get("required", [])}
    placeholders = {"string": "string", "integer": schema.get("minimum", 0), "number": 0, "boolean": False}
    return [] if kind == "array" else placeholders.get(str(kind))


def _ref_name(ref: dict[str, str]) -> str:
    return ref["$ref"].rsplit("/", 1)[-1]


def add_components(doc: dict[str, Any], ours: dict[str, Any]) -> None:
    """Merge `ours` into the document's schemas. A name FastAPI already uses for a different
    schema (a payload model called `JobView`, say) is renamed on our side, refs included."""
    existing: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
    renames: dict[str, str] = {}
    for name, schema in ours.items():
        if name in existing and existing[name] != schema:
            new, n = f"Payload_{name}", 2
            while new in existing or new in ours:
                new, n = f"Payload_{name}_{n}", n + 1
            renames[name] = new
    if renames:
        ours = _rewrite_refs({renames.get(k, k): v for k, v in ours.items()}, renames)
    existing.update(ours)


def _renamed(ref: str, renames: dict[str, str]) -> str:
    name = ref.rsplit("/", 1)[-1]
    return REF.format(model=renames.get(name, name))


def _rewrite_refs(node: Any, renames: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith("#/components/schemas/"):
                out[k] = _renamed(v, renames)
            elif k == "mapping" and isinstance(v, dict):  # a discriminator's refs, as plain strings
                out[k] = {t: _renamed(r, renames) for t, r in v.items()}
            else:
                out[k] = _rewrite_refs(v, renames)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v, renames) for v in node]
    return node
