"""The images without Docker: what a Dockerfile's instructions say (its ENV, WORKDIR, COPY, the requirements
its `pip install` lines take, CMD), the file tree its COPY lines bring (with `.dockerignore` applied), and fresh
virtualenvs filled offline from the machine's wheels.

Offline: every install is ``pip install --no-index`` from `WHEELHOUSE` and ``/opt/wheels`` (this machine's CPU
torch). The first run on a machine fills `WHEELHOUSE` once through the registry (``pip wheel`` of the same
requirements, sdists built into wheels); later runs touch no network. A machine without a local CPU torch
wheel points pip at one for that first run (``PIP_EXTRA_INDEX_URL``, as the Makefile's ``TORCH_INDEX``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from scripts.processes import ROOT

WHEELHOUSE = Path(os.environ.get("STILLMOVING_WHEELHOUSE") or Path.home() / ".cache" / "stillmoving" / "wheelhouse")
LOCAL_WHEELS = (WHEELHOUSE, Path("/opt/wheels"))
CPU_CONSTRAINTS = ROOT / "requirements" / "constraints-cpu.txt"
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)  # the interpreter under the test's venv


@dataclass
class Image:
    """One Dockerfile, read: container paths are POSIX; `copies` are (sources, destination) as written."""

    workdir: PurePosixPath = PurePosixPath("/")
    env: dict[str, str] = field(default_factory=dict)
    copies: list[tuple[list[str], PurePosixPath]] = field(default_factory=list)
    requirements: list[str] = field(default_factory=list)  # `-r` files, relative to the workdir
    packages: list[str] = field(default_factory=list)  # requirements named on a pip line itself (torch==...)
    cmd: list[str] = field(default_factory=list)
    expose: list[int] = field(default_factory=list)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        name, _, args = (pending + text).partition(" ")
        out.append((name.upper(), args.strip()))
        pending = ""
    return out


def read_image(path: Path) -> Image:
    image = Image()
    for name, args in instructions(path):
        if name == "WORKDIR":
            image.workdir = image.workdir / args
        elif name == "ENV":
            for item in shlex.split(args):
                key, sep, value = item.partition("=")
                assert sep, f"{path.name}: ENV {item!r} (only the KEY=VALUE form is read)"
                image.env[key] = value
        elif name == "COPY":
            parts = shlex.split(args)
            assert not any(p.startswith("--") for p in parts), f"{path.name}: COPY flags are not read: {args}"
            image.copies.append((parts[:-1], image.workdir / parts[-1]))
        elif name == "RUN":
            for command in args.split("&&"):
                words = shlex.split(command)
                if words[:2] == ["pip", "install"]:
                    _pip_line(words[2:], image)
        elif name == "CMD":
            image.cmd = json.loads(args)
        elif name == "EXPOSE":
            image.expose += [int(port.split("/")[0]) for port in args.split()]
    return image


def _pip_line(words: list[str], image: Image) -> None:
    """What one ``pip install`` installs: its ``-r`` files and named requirements (its index is the image's
    business: the CUDA torch there, the CPU build of the same version here)."""
    words = iter(words)
    for word in words:
        if word == "-r":
            image.requirements.append(next(words))
        elif word in ("--index-url", "--extra-index-url", "-i"):
            next(words)
        elif not word.startswith("-"):
            image.packages.append(word)


# ---- the files an image brings ----------------------------------------------------------------------
def _glob_regex(pattern: str) -> re.Pattern:
    """A `.dockerignore` pattern as Docker reads it: `*` and `?` within one path segment, `**` across them."""
    regex, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        else:
            regex += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(regex)


def dockerignore(root: Path = ROOT) -> list[re.Pattern]:
    lines = [line.strip() for line in (root / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "exceptions (!) in .dockerignore are not read here"
    return [_glob_regex(p.strip("/")) for p in patterns]


def ignored(relative: str, patterns: list[re.Pattern]) -> bool:
    """Whether the context path (or a folder above it) matches a pattern: Docker leaves it out."""
    parts = relative.split("/")
    return any(p.fullmatch("/".join(parts[:n])) for p in patterns for n in range(1, len(parts) + 1))


def build_tree(image: Image, rootfs: Path, context: Path = ROOT) -> Path:
    """Copy what the image's COPY lines bring from `context` under `rootfs`; returns the workdir there."""
    patterns = dockerignore(context)
    for sources, dest in image.copies:
        for source in sources:
            origin = context / source
            assert origin.exists(), f"COPY {source}: not in the build context"
            files = [origin] if origin.is_file() else sorted(p for p in origin.rglob("*") if p.is_file())
            for path in files:
                relative = path.relative_to(context).as_posix()
                if ignored(relative, patterns):
                    continue
                if origin.is_file():  # a file to a file, or into a folder (a destination ending in /)
                    target = dest / origin.name if str(dest).endswith("/") or len(sources) > 1 else dest
                else:  # a folder's contents into the destination folder
                    target = dest / path.relative_to(origin).as_posix()
                out = rootfs / target.relative_to("/")
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, out)
    workdir = rootfs / image.workdir.relative_to("/")
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def tree_files(top: Path) -> set[str]:
    return {p.relative_to(top).as_posix() for p in top.rglob("*") if p.is_file()}


# ---- virtualenvs --------------------------------------------------------------------------------------
def fresh_venv(path: Path) -> Path:
    """A new virtualenv (the interpreter's own pip, nothing else); returns its python."""
    subprocess.run([BASE_PYTHON, "-m", "venv", str(path)], check=True, capture_output=True)
    return path / "bin" / "python"


def _run(command: list[str], log: Path, cwd: Path) -> bool:
    with open(log, "ab") as out:
        out.write(("\n$ " + " ".join(command) + "\n").encode())
        out.flush()
        return subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT).returncode == 0


def install_offline(python: Path, args: list[str], log: Path, cwd: Path) -> None:
    """``pip install --no-index`` of `args` into `python`'s venv from the local wheels; what they lack is
    first fetched into `WHEELHOUSE` (once per machine), then the offline install runs again."""
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    links = [a for d in LOCAL_WHEELS if d.is_dir() for a in ("--find-links", str(d))]
    offline = [str(python), "-m", "pip", "install", "--no-index", "--no-cache-dir", "--disable-pip-version-check",
               "--no-compile", *links, *args]  # no bytecode: the images run with PYTHONDONTWRITEBYTECODE
    if _run(offline, log, cwd):
        return
    fetched = _run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "-w", str(WHEELHOUSE),
                    *args], log, cwd)
    for arg in args:  # a wheel given by path (the project's own) is installed from there, never kept
        if arg.endswith(".whl"):
            (WHEELHOUSE / Path(arg).name).unlink(missing_ok=True)
    assert fetched and _run(offline, log, cwd), f"installing {args} failed:\n{log.read_text()[-5000:]}"


def image_env(image: Image, rootfs: Path, venv: Path, **settings: str) -> dict[str, str]:
    """A process environment as the container has it: its ENV, each absolute path in it moved under `rootfs`
    (``/app`` is ``rootfs/app``), the venv's bin first on PATH, ``HOME`` in `rootfs`, nothing of the test's own
    (no PYTHONPATH but the image's), with `settings` (loopback servers) over it."""
    def moved(value: str) -> str:  # a path, or a list of them (PYTHONPATH)
        parts = value.split(":")
        return ":".join(str(rootfs) + part for part in parts) if all(p.startswith("/") for p in parts) else value

    home = rootfs / "home"
    home.mkdir(parents=True, exist_ok=True)
    path = f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    return {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8", **{k: moved(v) for k, v in image.env.items()},
            **settings}
