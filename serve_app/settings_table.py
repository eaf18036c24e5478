"""The README's table of every setting and environment variable, generated from the typed config
models so the documentation cannot drift from the defaults (a test compares the two).

    python -m serve_app.settings_table    # prints the Markdown table
"""
from __future__ import annotations

import json
import typing

from pydantic import BaseModel

from .config import AppArgs, BatchSettings, RouterSettings

SECTIONS = (
    ("`args` of the application (restart)", "args.", AppArgs),
    ("Router `user_config` (no restart)", "", RouterSettings),
    ("model deployments' `user_config` (no restart)", "", BatchSettings),
)
ENVIRONMENT = (
    ("KEPLER_HOME", "root of the default registry and cache", "~/.kepler-serve"),
    ("KEPLER_REGISTRY_URI", "registry directory, file:// or s3:// URI when `args.registry.uri` is unset",
     "$KEPLER_HOME/registry"),
    ("KEPLER_S3_ENDPOINT_URL / AWS_ENDPOINT_URL_S3", "S3-compatible endpoint", "AWS"),
    ("KEPLER_CACHE_DIR", "local cache of pulled versions", "$KEPLER_HOME/cache"),
    ("KEPLER_DATA_DIR", "where training reads the KOI tables", "data/"),
    ("KEPLER_SIGNING_KEY / KEPLER_VERIFY_KEY", "Ed25519 keys that sign (training) and verify (serving) versions",
     "unsigned"),
    ("KEPLER_API_KEYS", "API keys as `name:sha256:scope+scope[:rpm]` entries", "none"),
    ("KEPLER_JWT_PUBLIC_KEY", "public key (PEM text or path) that verifies JWTs", "no JWTs"),
    ("KEPLER_JWT_ISSUER / KEPLER_JWT_AUDIENCE", "required `iss` and `aud` of JWTs: both must be set with a key",
     "none (refused)"),
    ("KEPLER_ASSIGNMENT_SECRET", "key of sticky experiment assignment (at least 32 characters; keep it secret): "
     "clients keep their variant across controller restarts", "random per controller start"),
    ("KEPLER_REDIS_PASSWORD", "password of the Redis in `cache.redis_url` (kept out of the config)", "none"),
    ("RAY_SERVE_*", "Serve's threading, gRPC and HAProxy ingress levers, in the application's `runtime_env` and "
     "`configs/ingress.env`", "see those files"),
)


def _default(field) -> str:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        value = value.model_dump()
    text = json.dumps(value, default=str)
    return "none" if text == "null" else text.replace("|", "\\|")


def _nested_model(annotation) -> tuple[type[BaseModel] | None, bool]:
    """(the pydantic model inside an annotation, whether it sits in a dict keyed by model name)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if typing.get_origin(annotation) is dict and isinstance(args[-1], type) and issubclass(args[-1], BaseModel):
        return args[-1], True
    if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], False
    return None, False


def _rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        nested, keyed = _nested_model(field.annotation)
        if nested is RouterSettings:
            rows.append((f"`{prefix}{name}`", "see below", "the Router's settings at start; its user_config wins"))
        elif nested is not None:
            rows += _rows(nested, f"{prefix}{name}.{'<model>.' if keyed else ''}")
        else:
            rows.append((f"`{prefix}{name}`", f"`{_default(field)}`", (field.description or "").replace("|", "\\|")))
    return rows


def table() -> str:
    lines = ["| setting | default | meaning |", "|---|---|---|"]
    for title, prefix, model in SECTIONS:
        lines.append(f"| **{title}** | | |")
        lines += [f"| {path} | {default} | {meaning} |" for path, default, meaning in _rows(model, prefix)]
    lines.append("| **environment** | | |")
    lines += [f"| `{name}` | {default} | {meaning} |" for name, meaning, default in ENVIRONMENT]
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
