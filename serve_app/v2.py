"""Open Inference Protocol V2 (REST, JSON tensors): request decoding, response encoding and
model metadata. Ray-free; the router mounts the routes."""
from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from runtimes.explanation import Explanation
from runtimes.schema import LABELS, N_CLASSES

from .feature_rows import FLOAT32_MAX, WIDTHS as ROW_WIDTHS, shown

INPUT_NAME = "features"
WIDTHS = tuple(ROW_WIDTHS)  # the table features; then the diagnostics too (2.x only)
MISSING = "missing_value"  # V2 has no null: data equal to this request parameter are missing
OUTPUTS = ("probabilities", "labels")  # answered unless `outputs` asks for others
EXPLANATION_OUTPUTS = ("contributions", "base_values")  # only when asked for: explaining costs far more
_FLOAT_TYPES = {"FP32": np.float32, "FP64": np.float64}


class V2Error(ValueError):
    """Anything wrong with a V2 request: answered with HTTP 400 {"error": ...}."""


class TensorInput(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any]


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[TensorInput] = Field(..., min_length=1)
    outputs: list[RequestedOutput] | None = None


class TensorOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any]


class InferResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model_name: str
    model_version: str | None = None
    id: str
    parameters: dict[str, Any] | None = None
    outputs: list[TensorOutput]


def _flatten(data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:  # iterative: deeply nested input cannot exhaust the recursion limit
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def decode(request: InferRequest, max_rows: int) -> np.ndarray:
    """The single FP32/FP64 input tensor as a float32 matrix [N, 36] or [N, 69], NaN where a value
    equals the `missing_value` parameter (of the tensor, else of the request)."""
    if len(request.inputs) != 1:
        raise V2Error(f"inputs: expected exactly one input tensor named '{INPUT_NAME}', got {len(request.inputs)}")
    tensor = request.inputs[0]
    where = f"input {_quoted(tensor.name)}"
    if tensor.datatype not in _FLOAT_TYPES:
        raise V2Error(f"{where}: datatype must be FP32 or FP64, got {tensor.datatype!r}")
    if len(tensor.shape) != 2 or tensor.shape[1] not in WIDTHS or tensor.shape[0] < 1:
        raise V2Error(f"{where}: shape must be [N, {WIDTHS[0]}] or [N, {WIDTHS[1]}] with N >= 1, "
                      f"got [{', '.join(map(shown, tensor.shape))}]")
    if tensor.shape[0] > max_rows:
        raise V2Error(f"{where}: {shown(tensor.shape[0])} rows exceed the limit of {max_rows}")
    flat = _flatten(tensor.data)
    expected = tensor.shape[0] * tensor.shape[1]
    if len(flat) != expected:
        raise V2Error(f"{where}: shape {tensor.shape} needs {expected} values, data has {len(flat)}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in flat):
        raise V2Error(f"{where}: every value must be a number (V2 has no null: mark missing "
                      f"values with the '{MISSING}' parameter)")
    try:
        matrix = np.asarray(flat, dtype=np.float64).reshape(tensor.shape)
    except OverflowError:  # an integer beyond float64
        matrix = np.full(tensor.shape, np.inf)
    sentinel = _missing_value(request)
    if sentinel is not None:
        matrix[matrix == sentinel] = np.nan
    present = matrix[~np.isnan(matrix)] if sentinel is not None else matrix
    if not np.isfinite(present).all() or (np.abs(present) > FLOAT32_MAX).any():
        raise V2Error(f"{where}: values must be finite and within float32's range "
                      f"(|x| <= {FLOAT32_MAX:.4g})")
    return matrix.astype(np.float32)


def _quoted(name: str) -> str:
    """A tensor's name as messages show it: quoted, escaped (a lone surrogate has no UTF-8 to answer it
    in) and at most 64 characters of it."""
    return repr(name) if len(name) <= 64 else f"{name[:64]!r}... ({len(name)} characters)"


def _missing_value(request: InferRequest) -> float | None:
    tensor_parameters = request.inputs[0].parameters or {}
    value = tensor_parameters.get(MISSING, (request.parameters or {}).get(MISSING))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) <= FLOAT32_MAX:
        raise V2Error(f"parameters.{MISSING}: a finite number within float32's range, got {shown(value)}")
    return float(value)


def requested_outputs(request: InferRequest, model_name: str) -> list[str]:
    if not request.outputs:
        return list(OUTPUTS)
    names = [o.name for o in request.outputs]
    unknown = [n for n in names if n not in OUTPUTS + EXPLANATION_OUTPUTS]
    if unknown:
        raise V2Error(f"outputs: unknown output(s) {unknown}: this model has {list(OUTPUTS + EXPLANATION_OUTPUTS)}")
    if model_name == "ensemble" and set(names) & set(EXPLANATION_OUTPUTS):
        raise V2Error("outputs: the ensemble has no additive contributions (its members' attributions are in "
                      "different spaces); ask each member, or POST /api/v1/explain with model 'ensemble'")
    return names


def wants_explanation(outputs: list[str]) -> bool:
    return any(name in EXPLANATION_OUTPUTS for name in outputs)


def encode(model_name: str, version: str, request_id: str, probabilities: np.ndarray,
           outputs: list[str], explanation: Explanation | None = None) -> InferResponse:
    n = len(probabilities)
    tensors = _explanation_tensors(explanation) if explanation is not None else {}
    tensors |= {
        "probabilities": TensorOutput(name="probabilities", shape=[n, N_CLASSES], datatype="FP32",
                                      data=probabilities.astype(np.float32).ravel().tolist()),
        "labels": TensorOutput(name="labels", shape=[n], datatype="BYTES",
                               data=[LABELS[i] for i in probabilities.argmax(axis=1)]),
    }
    return InferResponse(model_name=model_name, model_version=version, id=request_id,
                         outputs=[tensors[name] for name in outputs])


def _explanation_tensors(explanation: Explanation) -> dict[str, "TensorOutput"]:
    """[N, classes, features] attributions in the version's feature order, and [N, classes] base values:
    base_values + contributions summed over features = the output in `output_space`."""
    n, classes, features = explanation.values.shape
    about = {"method": explanation.method, "output_space": explanation.output_space,
             "feature_names": list(explanation.features), "classes": list(LABELS)}
    return {"contributions": TensorOutput(name="contributions", shape=[n, classes, features], datatype="FP32",
                                          data=explanation.values.astype(np.float32).ravel().tolist(), parameters=about),
            "base_values": TensorOutput(name="base_values", shape=[n, classes], datatype="FP32",
                                        data=explanation.base_value.astype(np.float32).ravel().tolist(), parameters=about)}


def model_metadata(name: str, versions: list[str], platform: str, features: list[str]) -> dict:
    """`features`: the input schema of the version asked about (or the default one)."""
    shapes = [[-1, n] for n in WIDTHS if n <= len(features)]
    return {
        "name": name, "versions": versions, "platform": platform,
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, len(features)],
                    "parameters": {"accepted_shapes": shapes, "feature_names": features,
                                   MISSING: "optional number: data equal to it are missing values"}}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, N_CLASSES]},
                    {"name": "labels", "datatype": "BYTES", "shape": [-1]},
                    *([] if name == "ensemble" else [
                        {"name": "contributions", "datatype": "FP32", "shape": [-1, N_CLASSES, len(features)],
                         "parameters": {"on_request": True, "meaning": "per-feature attributions (see /api/v1/explain)"}},
                        {"name": "base_values", "datatype": "FP32", "shape": [-1, N_CLASSES],
                         "parameters": {"on_request": True}}])],
    }
