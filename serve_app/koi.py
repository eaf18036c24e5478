"""KOIs by name: the catalogue a router serves, each version's stored out-of-fold predictions, and
the ranking of the CANDIDATEs worth following up. Ray-free; the routes are in http/catalogue.py.

The catalogue is a registry dataset (koi_catalogue), pulled and verified once per replica and
kept; a catalogue object that fails its checksum or signature is refused, never loaded. The
ranking reads the version's out-of-fold predictions (training/folds.py): each KOI is scored by a
model that never saw its star, never by the served model, which was trained on most of them."""
from __future__ import annotations

import asyncio
import csv
import io
from dataclasses import dataclass

import numpy as np

from registry import ModelRegistry, NotFound, RegistryError
from runtimes.catalogue import DATASET, Catalogue, MalformedName, UnknownKOI
from runtimes.out_of_fold import FILE_NAME as OUT_OF_FOLD, read_out_of_fold
from runtimes.schema import LABELS
from runtimes.split import is_test_star

from .errors import BadRequest, ModelUnavailable, NotFoundError, withheld

MAX_CANDIDATES = 5000


@dataclass(frozen=True)
class OutOfFold:
    """One version's stored out-of-fold probabilities, by KOI."""

    rows: dict[str, int]
    folds: list[str]
    probabilities: np.ndarray  # [n, 3] in LABELS order

    @classmethod
    def parse(cls, data: bytes) -> "OutOfFold":
        names, folds, probabilities = read_out_of_fold(data)
        return cls({name: i for i, name in enumerate(names)}, list(folds), probabilities)

    def of(self, koi: str) -> np.ndarray:
        return self.probabilities[self.rows[koi]]


class KOIService:
    def __init__(self, registry: ModelRegistry, catalogue_ref: str = "stable"):
        self.registry, self.catalogue_ref = registry, catalogue_ref
        self._catalogue: Catalogue | None = None
        self._loading: asyncio.Lock | None = None
        self._out_of_fold: dict[tuple[str, str], OutOfFold] = {}

    def configure(self, catalogue_ref: str) -> None:
        if catalogue_ref != self.catalogue_ref:
            self.catalogue_ref, self._catalogue = catalogue_ref, None

    async def catalogue(self) -> Catalogue:
        if self._catalogue is None:
            self._loading = self._loading or asyncio.Lock()
            async with self._loading:
                if self._catalogue is None:
                    self._catalogue = await asyncio.to_thread(self._load)
        return self._catalogue

    def _load(self) -> Catalogue:
        datasets = self.registry.datasets
        try:
            version = datasets.resolve(DATASET, self.catalogue_ref)
            return Catalogue.load(datasets.pull(DATASET, version), version)
        except NotFound as e:
            raise withheld(ModelUnavailable, f"the KOI catalogue ({DATASET} {self.catalogue_ref}) is not in the "
                                             "registry: publish it with `kepler-registry dataset-publish`", e) from None
        except (RegistryError, ValueError, OSError) as e:
            raise withheld(ModelUnavailable, "the KOI catalogue cannot be loaded now", e) from None

    async def resolve(self, names: list[str | int], field: str) -> tuple[Catalogue, list[str]]:
        """Names as the client wrote them -> canonical KOI names (a KIC id expands to its KOIs)."""
        catalogue = await self.catalogue()
        kois: list[str] = []
        for i, name in enumerate(names):
            where = field if len(names) == 1 and field in ("koi", "name") else f"{field}[{i}]"
            try:
                kois += catalogue.resolve(name)
            except MalformedName as e:
                raise BadRequest(f"{where}: {e}") from None
            except UnknownKOI as e:
                raise NotFoundError(f"{where}: {e}") from None
        return catalogue, kois

    async def out_of_fold(self, model: str, version: str) -> OutOfFold:
        key = (model, version)
        if key not in self._out_of_fold:
            try:
                data = await asyncio.to_thread(self.registry.read_file, model, version, OUT_OF_FOLD)
            except NotFound:
                raise BadRequest(f"model: {model} {version} has no out-of-fold predictions to rank with (2.x "
                                 "versions of ensemble, xgboost and random_forest have them)") from None
            except (RegistryError, OSError) as e:
                raise withheld(ModelUnavailable, f"out-of-fold predictions of {model} {version} cannot be read from "
                               "the model registry now", e) from None
            self._out_of_fold[key] = OutOfFold.parse(data)
        return self._out_of_fold[key]


def koi_facts(catalogue: Catalogue, kois: list[str], split: str | None, own_split: str) -> list[dict]:
    """Per KOI: its name, archive disposition and whether the answering version trained on its star
    (null when the version was split by another rule than this service knows)."""
    kepids = catalogue.kepids(kois).tolist()
    facts = []
    for koi, kepid in zip(kois, kepids):
        row = {"koi": koi, "disposition": catalogue.disposition(koi),
               "in_training_set": (not is_test_star(kepid)) if split == own_split else None}
        facts.append(row)
    return facts


def rank_candidates(catalogue: Catalogue, ranked_by: OutOfFold, members: dict[str, OutOfFold], top: int) -> list[dict]:
    """The catalogue's current CANDIDATEs by out-of-fold P(CONFIRMED), highest first; ties by name."""
    kois = [k for k in catalogue.candidates() if k in ranked_by.rows]
    confirmed = np.array([ranked_by.of(k)[0] for k in kois])
    order = sorted(range(len(kois)), key=lambda i: (-confirmed[i], kois[i]))[:top]
    kepler_names = {k: catalogue.row(k)["kepler_name"] for k in (kois[i] for i in order)}
    return [{"rank": rank + 1, "koi": kois[i], "kepler_name": kepler_names[kois[i]],
             "p_confirmed": float(confirmed[i]),
             "probabilities": dict(zip(LABELS, ranked_by.of(kois[i]).tolist())),
             "scored_by": _scored_by(ranked_by.folds[ranked_by.rows[kois[i]]]),
             "members": {m: dict(zip(LABELS, oof.of(kois[i]).tolist())) for m, oof in members.items()}}
            for rank, i in enumerate(order)]


def _scored_by(fold: str) -> str:
    return "the version's model, trained without the test stars" if fold == "test" else \
        f"the fold-{fold} model, trained without this star's fold"


def as_csv(ranking: list[dict], members: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rank", "koi", "kepler_name", *(f"p_{label}" for label in LABELS),
                     *(f"{m}_p_{label}" for m in members for label in LABELS)])
    for entry in ranking:
        writer.writerow([entry["rank"], entry["koi"], entry["kepler_name"] or "",
                         *(f"{entry['probabilities'][label]:.6f}" for label in LABELS),
                         *(f"{entry['members'][m][label]:.6f}" for m in members for label in LABELS)])
    return buffer.getvalue()
