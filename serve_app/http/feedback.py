"""Delayed ground truth, /api/v1/feedback: true labels for earlier predictions, by request id or
KOI name (`feedback` scope). Each item gets its own outcome; the batch is stored before the answer."""
from __future__ import annotations

from collections import Counter

from fastapi import APIRouter, Request

from ..errors import ModelUnavailable
from ..feedback import OUTCOMES, FeedbackRequest, canonical_kois, parse_items, score_kois
from ..schemas import ErrorResponse
from .common import ingress, sees_variants

ERRORS = {status: {"model": ErrorResponse} for status in (401, 403, 413, 422, 429, 503)}
router = APIRouter(prefix="/api/v1", responses=ERRORS)


@router.post("/feedback")
async def feedback(body: FeedbackRequest, request: Request):
    """Resolved labels (CONFIRMED, FALSE_POSITIVE) for earlier predictions: `request_id` (answers
    within the retention window) or `koi` (scored again by each version it grades). A later label
    for the same item replaces the earlier one. Every item's outcome is reported; the labels that
    joined are stored before this answers, so a 200 is never lost."""
    service = ingress(request)
    service.ensure_syncing()
    parsed, outcomes = parse_items(body)
    scored = {}
    if any(item.ref_kind == "koi" for item in parsed):
        catalogue = await service.kois.catalogue()
        parsed, unknown = canonical_kois(catalogue, parsed)
        outcomes.update(unknown)
        kois = sorted({item.ref for item in parsed if item.ref_kind == "koi"})
        scored = await score_kois(catalogue, kois, await service.gradings(), service.versions.check_input,
                                  service.grade)
    principal = request.scope.get("state", {}).get("principal")
    result = {"stored": True, "batch": None, "outcomes": []}
    if parsed:
        result = await service.send_feedback(parsed, scored, body.source, principal.name if principal else None)
    if not result["stored"]:
        raise ModelUnavailable(f"feedback not stored ({result['reason']}): the registry's store cannot take it now; "
                               "nothing in this batch was acknowledged, send it again")
    for item in result["outcomes"]:
        outcomes[item["index"]] = item
    items = [outcomes[i] for i in sorted(outcomes)]
    if not sees_variants(request):  # as with predictions: only admins learn which variant answered
        for item in items:
            for graded in item.get("graded", ()):
                graded.pop("variant", None)
    counts = Counter(item["outcome"] for item in items)
    service.metrics.feedback_outcomes([item["outcome"] for item in items])
    return {"batch": result["batch"], "received": len(items),
            "stored": sum(counts[o] for o in ("joined", "relabelled", "unchanged")),
            "outcomes": {o: counts[o] for o in OUTCOMES if counts[o]}, "items": items}
