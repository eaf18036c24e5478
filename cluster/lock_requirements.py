"""cluster/requirements.lock: the container image's requirements, every one pinned and hashed.

    pip install uv                                # the resolver; not a project dependency
    python cluster/lock_requirements.py           # regenerate after constraints.txt changes
    python cluster/lock_requirements.py --check   # offline: the lock matches the pins (a test runs this)

The lock holds every package the project's runtime dependencies need (pyproject.toml's
`dependencies`, not the test extra), each at constraints.txt's version with the sha256 of every
file PyPI has for that version, resolved for the image's platform (CPython 3.11, x86_64 Linux)
wherever this runs. uv reads the hashes from PyPI's index, so nothing large is downloaded. Ray is
in it at the base image's version, which pip keeps. setuptools and wheel are pinned here, since
pip freeze leaves them out of constraints.txt; setuptools also builds the project in the image
(--no-build-isolation), so no unhashed build dependency is fetched.

--check cannot recompute hashes offline: it checks that the lock pins exactly constraints.txt's
versions of the runtime closure (walked through the installed distributions' metadata, as in CI's
virtualenv) and that every entry carries a sha256 hash. Regenerating is this script's job.
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "cluster" / "requirements.lock"
CONSTRAINTS = ROOT / "constraints.txt"
# Not in constraints.txt (pip freeze omits them); bump deliberately.
UNFROZEN = {"setuptools": "84.2.1", "wheel": "0.48.0"}
COMMAND = "python cluster/lock_requirements.py"
INDEX = "https://pypi.org/simple"
# The image's platform, for uv and for --check's markers alike. A patch release, not bare 3.11
# (which uv reads as 3.11.0): markers such as python_full_version < "3.11.3" must agree.
PYTHON = "3.11.7"
PLATFORM = ("--python-version", PYTHON, "--python-platform", "x86_64-manylinux_2_28")
MARKERS = {"python_version": "3.11", "python_full_version": PYTHON, "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64"}
_ENTRY = re.compile(r"^([A-Za-z0-9][\w.-]*)==(\S+)", re.M)
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})\b")


def pins() -> dict[str, str]:
    """Canonical name -> version: constraints.txt, then the packages pip freeze leaves out."""
    pinned = {canonicalize_name(name): version for name, version in _ENTRY.findall(CONSTRAINTS.read_text())}
    return {**pinned, **UNFROZEN}


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def runtime_closure() -> dict[str, str]:
    """Canonical name -> installed version of everything the runtime dependencies pull in, with
    their extras, on the image's platform."""
    found: dict[str, tuple[str, frozenset[str]]] = {}
    todo = [(r.name, frozenset(r.extras)) for r in project_requirements()
            if not r.marker or r.marker.evaluate({**MARKERS, "extra": ""})]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if key in found and extras <= found[key][1]:
            continue
        extras |= found[key][1] if key in found else frozenset()
        dist = metadata.distribution(name)
        found[key] = (dist.version, extras)
        for requirement in map(Requirement, dist.requires or []):
            environments = [{**MARKERS, "extra": extra} for extra in extras | {""}]
            if requirement.marker and not any(requirement.marker.evaluate(env) for env in environments):
                continue
            todo.append((requirement.name, frozenset(requirement.extras)))
    return {key: version for key, (version, _) in found.items()}


def locked(text: str) -> dict[str, tuple[str, list[str]]]:
    """Canonical name -> (version, sha256 hashes) of each entry of a lock file."""
    entries = re.split(r"\n(?=[A-Za-z0-9])", text)
    result = {}
    for entry in entries:
        match = _ENTRY.match(entry)
        if match:
            result[canonicalize_name(match.group(1))] = (match.group(2), _HASH.findall(entry))
    return result


def check() -> list[str]:
    """What is wrong with the lock, offline; empty when it pins exactly the runtime closure."""
    try:
        closure = runtime_closure()
    except metadata.PackageNotFoundError as e:
        return [f"{e.name} is not installed here: pip install -c constraints.txt -e ."]
    expected, lock = pins(), locked(LOCK.read_text())
    problems = [f"{name} is not pinned in constraints.txt" for name in sorted(set(closure) - set(expected))]
    problems += [f"{name} is missing from the lock" for name in sorted(set(closure) - set(lock))]
    problems += [f"{name} is in the lock but not a runtime dependency" for name in sorted(set(lock) - set(closure))]
    for name, (version, hashes) in sorted(lock.items()):
        if name in expected and version != expected[name]:
            problems.append(f"{name}=={version} in the lock, {expected[name]} pinned")
        if not hashes:
            problems.append(f"{name} has no sha256 hash")
    return problems


def _uv() -> list[str]:
    if shutil.which("uv"):
        return ["uv"]
    if importlib.util.find_spec("uv"):
        return [sys.executable, "-m", "uv"]
    raise SystemExit("uv is needed to regenerate the lock: pip install uv")


def generate() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        unfrozen = Path(tmp) / "unfrozen.txt"
        unfrozen.write_text("".join(f"{name}=={version}\n" for name, version in UNFROZEN.items()))
        subprocess.run([*_uv(), "pip", "compile", "pyproject.toml", "--constraint", "constraints.txt",
                        "--constraint", str(unfrozen), "--generate-hashes", "--no-annotate", *PLATFORM,
                        "--index-url", INDEX, "--no-config", "--quiet", "--custom-compile-command", COMMAND,
                        "--output-file", str(LOCK.relative_to(ROOT))], cwd=ROOT, check=True)


def main(argv: list[str]) -> int:
    if "--check" not in argv:
        generate()
        print(f"wrote {LOCK.relative_to(ROOT)}")
    problems = check()
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
