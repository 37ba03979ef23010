"""An OpenAPI 3 description of the HTTP API, generated from the dispatcher's registry.

Every function is the path C{/mvapireq/NAME} (the same as
C{/mvapireq/?apientry=NAME}) with GET and POST, its documented parameters
and the authentication parameters as optional strings, and the JSON answer
C{{code, status, message, data}}.  Served at C{/openapi.json} on the shared
port and written to docs/openapi.json (C{python -m mizud.api.openapi}).
"""

from __future__ import annotations

import json
from typing import Any

from .. import __version__
from .functions import build_registry
from .registry import Registry

#: Parameters every function accepts (see docs/api.md, Authentication).
AUTH_PARAMS = ("authkey", "authid", "authpwd", "authmd5", "authsalt1", "authsalt2", "nonce", "portalmd5",
               "portalsalt", "targetuser")

ANSWER = {
    "type": "object",
    "required": ["code", "status", "message"],
    "properties": {
        "code": {"type": "integer", "description": "200 on success, 499 on failure"},
        "status": {"type": "string", "enum": ["OK", "ERROR"]},
        "message": {"type": "string"},
        "data": {"type": "array", "items": {"type": "object"}},
    },
}


def _parameter(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": "string"}, "description": description}


def document(registry: Registry | None = None) -> dict[str, Any]:
    """The OpenAPI document."""
    registry = registry or build_registry()
    paths: dict[str, Any] = {}
    for function in registry:
        parameters = [_parameter(name, "a parameter of the function") for name in function.params]
        parameters += [{"$ref": f"#/components/parameters/{name}"} for name in (*AUTH_PARAMS, "format")
                       if name not in function.params]
        status = "" if function.implemented else f" Not supported: {function.unsupported}."
        operation = {
            "operationId": function.name,
            "summary": function.summary,
            "description": f"Category {function.category.value}.{status}",
            "parameters": parameters,
            "responses": {"200": {"description": "the answer (also for errors, unless httpstrictrtspose is on)",
                                  "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Answer"}}}}},
        }
        paths[f"/mvapireq/{function.name}"] = {"get": operation}
    return {
        "openapi": "3.0.3",
        "info": {"title": "mizud API", "version": __version__,
                 "description": "The Mizu VoIP server control API as mizud serves it. Every function also answers "
                                "/mvapireq/?apientry=NAME, in text, xml, soap and the other formats of docs/api.md."},
        "paths": paths,
        "components": {
            "schemas": {"Answer": ANSWER},
            "parameters": {
                **{name: _parameter(name, "authentication (see docs/api.md)") for name in AUTH_PARAMS},
                "format": {"name": "format", "in": "query", "required": False,
                           "schema": {"type": "string", "enum": ["json"], "default": "json"},
                           "description": "the answer's format; this document describes json"},
            },
        },
    }


def render() -> str:
    """docs/openapi.json."""
    return json.dumps(document(), indent=1, sort_keys=True, separators=(",", ":")) + "\n"


if __name__ == "__main__":
    print(render(), end="")
