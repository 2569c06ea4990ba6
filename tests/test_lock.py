"""The locks in ``requirements/`` (what ``make install``, ``make client-venvs`` and CI install):
every requirement of ``pyproject.toml`` is pinned there at a version it allows (its exact pins,
TensorFlow, the TF Serving API and Ray, at exactly that version), every pin carries hashes, the
extras' locks keep the main lock's pins, and ``make lock`` writes every lock. Nothing is installed
or fetched: the files are read."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCKS = REPO / "requirements"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
MAIN_EXTRAS = ("test", "load")
"""The extras ``make install`` installs (requirements/main.txt); gcs and gpu have locks of their
own, main.txt plus that extra."""

PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s\\;]+)"
    r"(?P<hashes>(?:[ \t]*\\\n[ \t]+--hash=sha256:[0-9a-f]{64})*)",
    re.MULTILINE,
)

pytestmark = pytest.mark.unit


def pins(lock: str) -> dict[str, tuple[str, int]]:
    """A lock's pins: canonical name -> (version, number of hashes)."""
    text = (LOCKS / lock).read_text()
    found: dict[str, tuple[str, int]] = {
        canonicalize_name(m["name"]): (m["version"], m["hashes"].count("--hash="))
        for m in PIN.finditer(text)
    }
    requirement_lines = [
        line for line in text.splitlines() if line and not line.startswith((" ", "#"))
    ]
    assert len(found) == len(requirement_lines), f"{lock}: a requirement that is not a pin"
    return found


def requirements(*extras: str) -> list[Requirement]:
    listed = PYPROJECT["dependencies"] + [
        r for extra in extras for r in PYPROJECT["optional-dependencies"][extra]
    ]
    return [Requirement(r) for r in listed]


def locks() -> list[str]:
    return sorted(p.name for p in LOCKS.glob("*.txt"))


def test_every_lock_pins_each_package_with_hashes() -> None:
    assert {"pip.txt", "build.txt", "main.txt", "gcs.txt", "gpu.txt", "triton.txt"} <= set(locks())
    for lock in locks():
        locked = pins(lock)
        assert locked, lock
        assert not [name for name, (_, hashes) in locked.items() if hashes == 0], lock


@pytest.mark.parametrize(
    ("lock", "extras"), [("main.txt", MAIN_EXTRAS), ("gcs.txt", (*MAIN_EXTRAS, "gcs"))]
)
def test_the_lock_pins_every_requirement_at_a_version_it_allows(
    lock: str, extras: tuple[str, ...]
) -> None:
    locked = pins(lock)
    for requirement in requirements(*extras):
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{lock} lacks {requirement}"
        assert requirement.specifier.contains(locked[name][0], prereleases=True), (
            f"{lock} pins {name}=={locked[name][0]}, pyproject asks {requirement}"
        )


def test_the_exact_pins_of_pyproject_are_the_locks() -> None:
    exact = {
        canonicalize_name(r.name): spec.version
        for r in requirements(*PYPROJECT["optional-dependencies"])
        for spec in r.specifier
        if spec.operator == "=="
    }
    assert {"tensorflow", "tensorflow-serving-api", "ray"} <= exact.keys()
    for lock in ("main.txt", "gcs.txt", "gpu.txt"):
        locked = pins(lock)
        assert {name: locked[name][0] for name in exact if name in locked} == {
            name: version for name, version in exact.items() if name in locked
        }, lock
    assert exact.keys() <= pins("main.txt").keys() | pins("gpu.txt").keys()


@pytest.mark.parametrize("extra", ["gcs", "gpu"])
def test_an_extras_lock_is_the_main_lock_plus_that_extra(extra: str) -> None:
    main, with_extra = pins("main.txt"), pins(f"{extra}.txt")
    assert {name: version for name, (version, _) in main.items()} == {
        name: with_extra[name][0] for name in main if name in with_extra
    }
    assert main.keys() < with_extra.keys()
    for requirement in requirements(extra):
        assert canonicalize_name(requirement.name) in with_extra, requirement


def test_the_extras_locks_agree_where_they_meet() -> None:
    """``pip install -r gcs.txt -r gpu.txt`` installs both extras: no package at two versions."""
    gcs, gpu = pins("gcs.txt"), pins("gpu.txt")
    assert {n: gcs[n][0] for n in gcs.keys() & gpu.keys()} == {
        n: gpu[n][0] for n in gcs.keys() & gpu.keys()
    }


def test_each_in_file_is_pinned_by_its_lock() -> None:
    for source in sorted(LOCKS.glob("*.in")):
        locked = pins(source.with_suffix(".txt").name)
        for line in source.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                requirement = Requirement(line)
                name = canonicalize_name(requirement.name)
                assert name in locked, f"{source.name}: {requirement}"
                assert requirement.specifier.contains(locked[name][0]), f"{source.name}"


def test_make_lock_writes_every_lock_and_every_install_is_pinned() -> None:
    """Every ``pip install`` of the Makefile takes a lock with hashes, but the project itself
    (``--no-deps``) and the locking tool (one pinned version, ``UV``)."""
    makefile = (REPO / "Makefile").read_text()
    lock_target = makefile.split("\nlock:\n", 1)[1].split("\n\n", 1)[0]
    assert set(re.findall(r"-o \$\(LOCKS\)/(\S+\.txt)", lock_target)) == set(locks())
    installs = re.findall(r"pip install (.*)", makefile)
    from_locks = [line for line in installs if " -r " in line]
    assert len(from_locks) >= 4 and all("--require-hashes" in line for line in from_locks)
    others = [line for line in installs if line not in from_locks]
    assert others == ["-q --no-deps --build-constraint $(LOCKS)/build.txt -e .", '-q "$(UV)"']
    assert re.search(r"^UV \?= uv==[\d.]+$", makefile, re.MULTILINE)
