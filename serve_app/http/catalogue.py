"""KOIs by name (/api/v1/koi) and the follow-up ranking of CANDIDATEs (/api/v1/candidates)."""
from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse

from runtimes.ensemble import EnsembleRecord, RECORD_FILE
from runtimes.ensemble import NAME as ENSEMBLE

from ..koi import MAX_CANDIDATES, as_csv, rank_candidates
from ..schemas import ErrorResponse
from ..versions import registry_call
from .common import ingress

router = APIRouter(prefix="/api/v1", responses={s: {"model": ErrorResponse} for s in (404, 422, 503)})


@router.get("/koi/{name}")
async def koi(name: str, request: Request):
    """The catalogue's rows for a KOI, a Kepler name or a KIC id (every KOI of that star)."""
    catalogue, kois = await ingress(request).kois.resolve([name], "name")
    return {"catalogue_version": catalogue.version, "kois": [catalogue.row(k) for k in kois]}


@router.get("/kois")
async def kois(request: Request, prefix: str = Query("", max_length=64), limit: int = Query(10, ge=1, le=50)):
    """Suggestions as one types: the KOIs whose KOI name ("752", "K00752", "KOI-752.0") or Kepler
    name ("kepler-22") begins with `prefix`, in name order, at most `limit`; none for no match."""
    catalogue = await ingress(request).kois.catalogue()
    return {"catalogue_version": catalogue.version, "matches": catalogue.suggest(prefix, limit)}


@router.get("/candidates")
async def candidates(request: Request, model: Literal["ensemble", "xgboost", "random_forest"] = "ensemble",
                     version: str | None = None, top: int = Query(50, ge=1, le=MAX_CANDIDATES),
                     format: Literal["json", "csv"] = "json"):
    """The catalogue's current CANDIDATEs ranked by P(CONFIRMED), each scored out of sample: by a
    model of the version's recipe that never saw the KOI's star (its stored out-of-fold
    predictions), with each ensemble member's probabilities beside it."""
    service = ingress(request)
    resolved = await service.versions.aliases.resolve(model, version or "stable")
    catalogue = await service.kois.catalogue()
    ranked_by = await service.kois.out_of_fold(model, resolved)
    members: dict = {}
    if model == ENSEMBLE:
        data = await registry_call(lambda: service.registry.read_file(ENSEMBLE, resolved, RECORD_FILE))
        record = EnsembleRecord.from_json(data)
        members = {m: await service.kois.out_of_fold(m, resolved) for m in record.members}
    ranking = rank_candidates(catalogue, ranked_by, members, top)
    if format == "csv":
        header = f"# model {model} {resolved}, catalogue {catalogue.version}, out-of-fold P(CONFIRMED)\n"
        return PlainTextResponse(header + as_csv(ranking, list(members)), media_type="text/csv")
    return {"model": model, "version": resolved, "catalogue_version": catalogue.version,
            "ranked_by": "out-of-fold P(CONFIRMED): each KOI scored by a model that never saw its star",
            "candidates_in_catalogue": len(catalogue.candidates()), "top": top, "candidates": ranking}

