"""Every answer a test reads from the service is checked, whatever the test asserts itself: each
probability finite and in [0, 1], each row summing to 1 within 1e-6 (REST answers, ensemble
members, KOI lookups, candidates, V2's `probabilities` tensor). Installed for the whole session
on requests' Session.send, which requests.get/post and the project's client all go through."""
from __future__ import annotations

import json
import math
import re

import requests

SERVICE_PORT = ":8000"  # the Serve proxy's port, on the single node and on the cluster alike
# The routes that answer with probabilities (not /openapi.json, whose schemas name the same fields).
ANSWERING = re.compile(r"(/[^/]+)?/(api/v1/(predict(/batch)?|explain|koi/[^?]*|candidates)|v2/models/[^/]+"
                       r"(/versions/[^/]+)?/infer)(\?.*)?$")
TOLERANCE = 1e-6


class BadProbabilities(AssertionError):
    pass


def check_row(row, where: str) -> None:
    values = list(row.values()) if isinstance(row, dict) else list(row)
    if not values or not all(isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= 1 for v in values):
        raise BadProbabilities(f"{where}: probabilities not finite in [0, 1]: {row}")
    if abs(sum(values) - 1) > TOLERANCE:
        raise BadProbabilities(f"{where}: probabilities sum to {sum(values)!r}, not 1 within {TOLERANCE}: {row}")


def check_answer(body, where: str = "answer") -> int:
    """Checks every probability row in a JSON answer; returns how many it checked."""
    checked, stack = 0, [(body, where)]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            if node.get("name") == "probabilities" and isinstance(node.get("data"), list):  # a V2 tensor
                shape, data = node.get("shape") or [], node["data"]
                width = shape[-1] if len(shape) == 2 else len(data)
                for i in range(0, len(data), max(1, width)):
                    check_row(data[i:i + width], f"{path}.data[{i // max(1, width)}]")
                    checked += 1
                continue
            for key, value in node.items():
                if key == "probabilities" and isinstance(value, dict):
                    check_row(value, f"{path}.probabilities")
                    checked += 1
                else:
                    stack.append((value, f"{path}.{key}"))
        elif isinstance(node, list):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(node))
    return checked


def install() -> callable:
    """Wraps Session.send; returns the function that removes the wrapper."""
    original = requests.Session.send

    def send(session, request, **kwargs):
        response = original(session, request, **kwargs)
        if (not kwargs.get("stream") and SERVICE_PORT in (request.url or "") and response.status_code == 200
                and ANSWERING.match(request.path_url)
                and response.headers.get("content-type", "").startswith("application/json")):
            try:
                body = response.json()
            except (ValueError, json.JSONDecodeError):
                return response
            check_answer(body, f"{request.method} {request.path_url}")
        return response

    requests.Session.send = send
    return lambda: setattr(requests.Session, "send", original)
