"""Which paths DVC owns: the outputs of the stages in ``dvc.yaml`` and of ``.dvc`` files.

Anything written inside a DVC output by something other than its stage is lost: ``dvc repro``
deletes a stage's outputs before it runs the stage, and ``dvc checkout`` replaces them with
the cached version. An annotate run that appended the inbox's annotations to the annotate
stage's folder had them deleted by the next ``dvc repro``. :func:`owner_of` tells a command
(annotate, the inbox, ``faces doctor``) before it writes that a folder is DVC's, so it can
refuse with a message instead of losing data later.

Reading ``dvc.yaml`` here needs no DVC import (fast, and safe while ``dvc repro`` holds the
repository): ``${section.key}`` and ``${section.list[0]}`` are resolved from ``params.yaml``,
the only templating this project's ``dvc.yaml`` uses.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

_TEMPLATE = re.compile(r"\$\{\s*([^}]+?)\s*\}")
_INDEX = re.compile(r"^(.*?)\[(\d+)\]$")


@dataclass(frozen=True, slots=True)
class DvcOutput:
    """One output DVC owns.

    Attributes:
        path: Absolute, normalised path of the output.
        owner: ``stage <name>`` (dvc.yaml) or the ``.dvc`` file that tracks it.
        repo: The DVC repository's root.
    """

    path: Path
    owner: str
    repo: Path


def find_repo(start: str | os.PathLike[str]) -> Path | None:
    """The nearest directory at or above ``start`` holding a ``.dvc`` folder, or None."""
    path = Path(os.path.abspath(start))
    for candidate in (path, *path.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    return None


def _lookup(params: dict[str, Any], dotted: str) -> Any:
    value: Any = params
    for part in dotted.split("."):
        match = _INDEX.match(part)
        key, index = (match.group(1), int(match.group(2))) if match else (part, None)
        value = value[key]
        if index is not None:
            value = value[index]
    return value


def _resolve(text: str, params: dict[str, Any]) -> str | None:
    """``text`` with its ``${...}`` filled from params; None when a name is missing or null."""
    try:
        values = {m.group(0): _lookup(params, m.group(1)) for m in _TEMPLATE.finditer(text)}
    except (KeyError, IndexError, TypeError):
        return None
    if any(v is None for v in values.values()):
        return None
    for template, value in values.items():
        text = text.replace(template, str(value))
    return text


def _out_paths(entries: Any) -> Iterator[str]:
    for entry in entries or []:
        if isinstance(entry, str):
            yield entry
        elif isinstance(entry, dict):
            yield from (str(k) for k in entry)


def dvc_outputs(repo: str | os.PathLike[str]) -> list[DvcOutput]:
    """Every output of ``repo``'s stages (outs, metrics, plots) and ``.dvc`` files.

    A file that cannot be read or parsed gives no outputs (``faces doctor`` reports a broken
    dvc.yaml on its own); an unresolvable ``${...}`` skips that one output.
    """
    root = Path(os.path.abspath(repo))
    found: list[DvcOutput] = []
    try:
        params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        params = {}
    try:
        pipeline = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        pipeline = {}
    stages = pipeline.get("stages") if isinstance(pipeline, dict) else None
    for name, stage in (stages or {}).items():
        if not isinstance(stage, dict):
            continue
        for kind in ("outs", "metrics", "plots"):
            for raw in _out_paths(stage.get(kind)):
                resolved = _resolve(raw, params if isinstance(params, dict) else {})
                if resolved:
                    found.append(DvcOutput(Path(os.path.normpath(root / resolved)), f"stage {name}", root))
    for tracked in _dvc_files(root, {o.path for o in found}):
        try:
            data = yaml.safe_load(tracked.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue
        for out in data.get("outs") or [] if isinstance(data, dict) else []:
            if isinstance(out, dict) and out.get("path"):
                path = Path(os.path.normpath(tracked.parent / str(out["path"])))
                found.append(DvcOutput(path, str(tracked.relative_to(root)), root))
    return found


_DVC_FILE_DEPTH = 3
"""``.dvc`` files are looked for this many folders deep at most: ``dvc add`` files sit beside
the data they track (``data/IMFDB_final.dvc``), and a raw image store below ``data/`` may
hold millions of files that a full walk would visit on every annotate start."""


def _dvc_files(root: Path, outputs: set[Path]) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        depth = len(here.relative_to(root).parts)
        dirs[:] = [
            d
            for d in dirs
            if depth + 1 < _DVC_FILE_DEPTH and not d.startswith(".") and d != "node_modules" and here / d not in outputs
        ]
        yield from (here / f for f in sorted(files) if f.endswith(".dvc"))


def owner_of(path: str | os.PathLike[str], written: tuple[str, ...] = ()) -> DvcOutput | None:
    """The DVC output that ``path`` is (or lies inside), if any.

    Args:
        path: A folder a command is about to write.
        written: Names the command creates directly under ``path`` (annotate: ``annotations``,
            ``files``, ...): a DVC output at one of them is just as much at risk.

    Returns:
        The owning output, or None when ``path`` is outside every DVC repository's outputs.
    """
    target = Path(os.path.normpath(os.path.abspath(path)))
    repo = find_repo(target)
    if repo is None:
        return None
    candidates = [target, *(target / name for name in written)]
    for output in dvc_outputs(repo):
        for candidate in candidates:
            if candidate == output.path or candidate.is_relative_to(output.path):
                return output
    return None
