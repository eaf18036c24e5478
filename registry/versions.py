"""Names, versions and aliases: what the registry accepts, checked before any I/O."""
from __future__ import annotations

import re

from .errors import InvalidName

_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidName(f"invalid model name {name!r}: expected lowercase letters, digits and '_'")
    return name


def check_version(version: str) -> str:
    """A semantic version MAJOR.MINOR.PATCH; a leading 'v' is accepted and dropped."""
    if isinstance(version, str) and version.startswith("v"):
        version = version[1:]
    if not isinstance(version, str) or not _SEMVER.match(version):
        raise InvalidName(f"invalid version {version!r}: expected a semantic version such as 1.0.0")
    return version


def is_version(text: str) -> bool:
    try:
        check_version(text)
        return True
    except InvalidName:
        return False


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not _ALIAS.match(alias) or is_version(alias):
        raise InvalidName(f"invalid alias {alias!r}: expected a lowercase word such as 'stable'")
    return alias


def version_key(version: str) -> tuple[int, int, int]:
    major, minor, patch = (int(p) for p in check_version(version).split("."))
    return major, minor, patch
