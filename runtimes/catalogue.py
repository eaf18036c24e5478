"""KOIs by name: the koi_catalogue dataset, loaded once, answering which KOIs a name means, what
the catalogue says of them and their feature rows. Ray-free; serving builds on it.

Accepted names (case-insensitive, surrounding spaces ignored), each one regex below:
    a KOI          K00752.01, KOI-752.01, KOI 752.01, koi752.01, 752.01  -> that KOI
    a Kepler name  Kepler-227 b, kepler-227b, Kepler-410 A b             -> that KOI
    a KIC id       10797460, KIC 10797460 (or the int 10797460)          -> every KOI of that star
"""
from __future__ import annotations

import math
import numbers
import re
from pathlib import Path

import numpy as np
import pandas as pd

from runtimes.schema import LABELS, WITH_DIAGNOSTICS

DATASET = "koi_catalogue"  # the registry dataset holding it
CATALOGUE_FILE = "catalogue.csv.gz"
IDENTITY = ("kepoi_name", "kepid", "kepler_name")
DISPOSITION_PREFIX = "disposition_"  # then the snapshot's date, e.g. disposition_2025_09_18
MAX_NAME_LENGTH = 64
MAX_KEPID = 999_999_999  # KIC ids have at most 9 digits; a larger int cannot be one

_FLAGS = re.IGNORECASE | re.ASCII  # ASCII: no other script's digits or spaces
KOI_NAME = re.compile(r"(?:k|koi[-\s]?)?(\d{1,5})\.(\d{2})", _FLAGS)
KEPLER_NAME = re.compile(r"kepler[-\s]?(\d{1,5})\s*([a-z]?)\s*([a-z])", _FLAGS)  # host number, star, planet
KIC_ID = re.compile(r"(?:kic[-\s]?)?(\d{1,9})", _FLAGS)
ACCEPTED = ("a KOI (K00752.01, KOI-752.01, KOI 752.01, koi752.01, 752.01), a Kepler name (Kepler-227 b) "
            "or a KIC id (10797460, KIC 10797460)")


class MalformedName(ValueError):
    """Not a name of any accepted form."""


class UnknownKOI(KeyError):
    """A well-formed name the catalogue does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidCatalogue(ValueError):
    """The catalogue file does not have the expected shape."""


def _quote(name: object) -> str:
    """The input as the message shows it: short, and never the cost of printing a huge value."""
    if isinstance(name, str) and len(name) > MAX_NAME_LENGTH:
        return f"{name[:MAX_NAME_LENGTH]!r}... ({len(name)} characters)"
    if isinstance(name, numbers.Integral) and not isinstance(name, bool) and abs(name) >= 10 ** MAX_NAME_LENGTH:
        return f"<an integer of {int(name).bit_length()} bits>"  # repr() refuses ints over 4300 digits
    if isinstance(name, (str, numbers.Number, type(None))):
        return repr(name)
    return f"<a {type(name).__name__}>"


def _malformed(name: object) -> MalformedName:
    return MalformedName(f"malformed KOI name {_quote(name)}: expected {ACCEPTED}")


def canonical_koi(number: str, suffix: str) -> str:
    return f"K{int(number):05d}.{suffix}"


def kepler_key(match: re.Match) -> str:
    """One spelling per Kepler name: 'Kepler-227 b', 'kepler-227b' -> 'kepler-227b'."""
    number, star, planet = match.groups()
    return f"kepler-{int(number)}{star}{planet}".lower()


class Catalogue:
    """One catalogue version in memory: its rows by name, by Kepler name and by host star, indexed
    once at load so each lookup is a dict access."""

    def __init__(self, table: pd.DataFrame, version: str):
        self.disposition_columns, self.feature_names = _check_columns(table)
        self.version = version
        self.names: list[str] = _check_names(table["kepoi_name"].tolist())
        self._rows = {name: i for i, name in enumerate(self.names)}
        self._kepids = table["kepid"].to_numpy(dtype=np.int64)
        self._kepler_names: list[str | None] = [None if pd.isna(n) else str(n) for n in table["kepler_name"]]
        self._by_kepler = _kepler_index(self.names, self._kepler_names)
        self._by_star: dict[int, list[str]] = {}
        for name, kepid in zip(self.names, self._kepids.tolist()):
            self._by_star.setdefault(kepid, []).append(name)  # rows are in name order
        self.current_disposition = self.disposition_columns[-1]  # the dates sort: the latest is current
        self._dispositions = {c: table[c].tolist() for c in self.disposition_columns}
        self._feature_index = {name: i for i, name in enumerate(self.feature_names)}
        self._matrix = table[list(self.feature_names)].to_numpy(dtype=np.float64)
        current = self._dispositions[self.current_disposition]
        self._candidates = [n for n, d in zip(self.names, current) if d == "CANDIDATE"]

    @classmethod
    def load(cls, directory: Path, version: str) -> "Catalogue":
        """The catalogue in a pulled (already verified) dataset directory."""
        path = Path(directory) / CATALOGUE_FILE
        try:
            # Only empty cells are missing: no other text ("NA", "null") may pass for a missing value.
            table = pd.read_csv(path, dtype={"kepoi_name": str, "kepler_name": str}, keep_default_na=False,
                                na_values=[""])
        except (ValueError, EOFError, OSError) as e:  # unparsable CSV, truncated or not gzip, unreadable
            raise InvalidCatalogue(f"{path} is not a readable catalogue: {e}") from None
        return cls(table, version)

    def __len__(self) -> int:
        return len(self.names)

    # ---- names ----------------------------------------------------------------------------
    def resolve(self, name: str | int) -> list[str]:
        """The canonical names of the KOIs `name` means, in name order (several for a KIC id)."""
        if isinstance(name, numbers.Integral) and not isinstance(name, bool):
            if not 0 <= name <= MAX_KEPID:
                raise _malformed(name)
            return self._star(int(name))
        if not isinstance(name, str):
            raise _malformed(name)
        if len(name) > MAX_NAME_LENGTH:
            raise _malformed(name)
        text = name.strip()
        if match := KOI_NAME.fullmatch(text):
            return [self._known(canonical_koi(*match.groups()))]
        if match := KEPLER_NAME.fullmatch(text):
            return [self._kepler(match, text)]
        if match := KIC_ID.fullmatch(text):
            return self._star(int(match.group(1)))
        raise _malformed(name)

    def _known(self, koi: str) -> str:
        if koi not in self._rows:
            raise UnknownKOI(f"unknown KOI {koi!r}: not in the KOI catalogue {self.version}")
        return koi

    def _kepler(self, match: re.Match, text: str) -> str:
        try:
            return self._by_kepler[kepler_key(match)]
        except KeyError:
            raise UnknownKOI(f"no KOI is named {text!r} in the KOI catalogue {self.version}") from None

    def _star(self, kepid: int) -> list[str]:
        if kepid not in self._by_star:
            raise UnknownKOI(f"no KOI of the star KIC {kepid} in the KOI catalogue {self.version}")
        return list(self._by_star[kepid])

    # ---- rows -----------------------------------------------------------------------------
    def _index(self, koi: str) -> int:
        try:
            return self._rows[koi]
        except (KeyError, TypeError):
            raise UnknownKOI(f"unknown KOI {_quote(koi)}: expected a canonical name such as K00752.01 "
                             f"in the KOI catalogue {self.version}") from None

    def disposition(self, koi: str) -> str:
        """The current archive disposition, without building the whole row."""
        return self._dispositions[self.current_disposition][self._index(koi)]

    def row(self, koi: str) -> dict:
        """What the catalogue says of one KOI, JSON-ready (missing values are None)."""
        i = self._index(koi)
        dispositions = {c: self._dispositions[c][i] for c in self.disposition_columns}
        values = self._matrix[i].tolist()
        return {"kepoi_name": koi, "kepid": int(self._kepids[i]), "kepler_name": self._kepler_names[i],
                **dispositions, "disposition": dispositions[self.current_disposition],
                "features": {n: None if math.isnan(v) else v for n, v in zip(self.feature_names, values)}}

    def features(self, kois: list[str], names: tuple[str, ...] = WITH_DIAGNOSTICS) -> np.ndarray:
        """float32 [len(kois), len(names)], NaN where a value is missing."""
        rows = [self._index(koi) for koi in kois]
        try:
            columns = [self._feature_index[name] for name in names]
        except KeyError as e:
            raise KeyError(f"the catalogue has no feature {e.args[0]!r}") from None
        return self._matrix[np.ix_(rows, columns)].astype(np.float32)

    def kepids(self, kois: list[str]) -> np.ndarray:
        return self._kepids[[self._index(koi) for koi in kois]]

    def candidates(self) -> list[str]:
        """The KOIs whose current disposition is CANDIDATE, in name order."""
        return list(self._candidates)

    def suggest(self, prefix: str, limit: int = 10) -> list[dict]:
        """The KOIs whose name begins with what was typed so far, for suggestions as one types:
        [{"koi", "kepler_name", "disposition"}], KOI-name matches in name order, then Kepler-name
        matches (Kepler-22 b before Kepler-220 b), at most `limit`. Never raises: [] for no match.

        KOI names in the forms `resolve` accepts, partly typed: "752", "K752", "KOI-752" mean KOI
        752 (K00752.01, K00752.02, ...), "752.0" its .0x planets; digits with a leading zero, or
        five of them, are a prefix of the canonical name ("K0075" -> K00750.01 ... K00759.xx).
        Kepler names case-insensitively, spaces and hyphen optional: "kepler-22", "Kepler 22 b".
        Each look-up is a bisection of sorted keys, built on first use."""
        from bisect import bisect_left

        if not isinstance(prefix, str) or isinstance(limit, bool) or not isinstance(limit, numbers.Integral):
            return []
        if limit < 1 or len(prefix) > MAX_NAME_LENGTH or not prefix.isascii():  # ASCII as `resolve`'s regexes
            return []
        text = " ".join(prefix.split()).lower()  # spaces collapsed
        if not text:
            return []
        index = self.__dict__.get("_suggest_index")
        if index is None:  # Kepler names as "kepler-22 b", "kepler-410 a b": a space sorts before digits
            pairs = sorted((f"kepler-{int(m[1])} {m[2].lower() + ' ' if m[2] else ''}{m[3].lower()}", i)
                           for i, n in enumerate(self._kepler_names) if n and (m := KEPLER_NAME.fullmatch(n)))
            index = self._suggest_index = ([key for key, _ in pairs], [i for _, i in pairs])
        keys: list[tuple[list[str], list[int] | None, str]] = []  # (sorted keys, rows or None, prefix)
        if text in ("k", "ko", "koi", "koi-"):
            keys.append((self.names, None, "K"))
        elif match := re.fullmatch(r"(?:koi[-\s]?|k)?(\d{1,5})(\.\d{0,2})?", text, _FLAGS):
            digits, suffix = match.groups()
            literal = suffix is None and (digits.startswith("0") or len(digits) == 5)
            keys.append((self.names, None, f"K{digits}" if literal else f"K{int(digits):05d}{suffix or ''}"))
        if "kepler".startswith(text):
            keys.append((index[0], index[1], text))
        elif match := re.fullmatch(r"kepler[-\s]?(?:(\d{1,5})(?:\s?([a-z])(?:\s?([a-z]))?)?)?", text, _FLAGS):
            number, star, planet = match.groups()
            key = "kepler-" if number is None else f"kepler-{int(number)}"
            if star is not None:
                key += f" {star} {planet}" if planet else f" {star}"
            keys.append((index[0], index[1], key))
        found: list[dict] = []
        seen: set[int] = set()
        current = self._dispositions[self.current_disposition]
        for sorted_keys, rows, start in keys:
            i = bisect_left(sorted_keys, start)
            while len(found) < limit and i < len(sorted_keys) and sorted_keys[i].startswith(start):
                row = i if rows is None else rows[i]
                i += 1
                if row in seen:
                    continue
                seen.add(row)
                found.append({"koi": self.names[row], "kepler_name": self._kepler_names[row],
                              "disposition": current[row]})
        return found


def _check_columns(table: pd.DataFrame) -> tuple[list[str], tuple[str, ...]]:
    """The disposition columns (oldest first) and the feature columns, once the table is known to
    hold what a catalogue must: the names, numeric ids and features, known dispositions."""
    missing = [c for c in (*IDENTITY, *WITH_DIAGNOSTICS) if c not in table.columns]
    if missing:
        raise InvalidCatalogue(f"the catalogue lacks the columns {', '.join(missing)}")
    dispositions = sorted(c for c in table.columns if c.startswith(DISPOSITION_PREFIX))
    if not dispositions:
        raise InvalidCatalogue(f"the catalogue has no {DISPOSITION_PREFIX}* column")
    for column in dispositions:
        unknown = set(table[column]) - set(LABELS)
        if unknown:
            raise InvalidCatalogue(f"{column}: unexpected dispositions {sorted(map(str, unknown))}")
    features = tuple(c for c in table.columns if c not in IDENTITY and c not in dispositions)
    if not pd.api.types.is_integer_dtype(table["kepid"]):
        raise InvalidCatalogue("kepid must hold an integer on every row")
    not_numeric = [c for c in features if not pd.api.types.is_numeric_dtype(table[c])]
    if not_numeric:
        raise InvalidCatalogue(f"the features {', '.join(not_numeric)} hold non-numeric values")
    return dispositions, features


def _check_names(names: list) -> list[str]:
    canonical = all(isinstance(n, str) and re.fullmatch(r"K\d{5}\.\d{2}", n) for n in names)
    if not canonical or any(a >= b for a, b in zip(names, names[1:])):
        raise InvalidCatalogue("kepoi_name must hold names of the form K00752.01, unique and sorted")
    return names


def _kepler_index(names: list[str], kepler_names: list[str | None]) -> dict[str, str]:
    index: dict[str, str] = {}
    for koi, kepler_name in zip(names, kepler_names):
        if kepler_name is None:
            continue
        match = KEPLER_NAME.fullmatch(kepler_name)
        if match is None:
            raise InvalidCatalogue(f"{koi}: Kepler name {kepler_name!r} does not parse")
        key = kepler_key(match)
        if index.setdefault(key, koi) != koi:
            raise InvalidCatalogue(f"{koi} and {index[key]} are both named {kepler_name!r}")
    return index
