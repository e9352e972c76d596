"""A kill after every single step of the commit: recover leaves all-old or all-new outputs.

:func:`commit_steps` yields after each step; abandoning it there leaves the files exactly
as a SIGKILL at that point would (the random kills of test_faults_kill.py rarely land
inside these milliseconds, so each step is checked here one by one).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from faces_core.storage import COMMIT_JOURNAL, ERRORS_FILE, FACES_DIR, SUMMARY_FILE, commit_steps, recover, staging_dir

STEPS = [
    "journal",
    ERRORS_FILE,
    SUMMARY_FILE,
    "faces-aside",
    "faces-in",
    "old-removed",
    "journal-removed",
    "staging-removed",
]


def _write_outputs(root: Path, tag: str) -> None:
    (root / FACES_DIR / "source=tcs").mkdir(parents=True, exist_ok=True)
    (root / FACES_DIR / "source=tcs" / "part-00000.parquet").write_text(tag)
    (root / ERRORS_FILE).write_text(tag)
    (root / SUMMARY_FILE).write_text(tag)


def _state(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): p.read_text() for p in sorted(out.rglob("*")) if p.is_file()}


def test_commit_step_names_are_the_documented_ones(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _write_outputs(out, "old")
    staging = staging_dir(out, "run")
    _write_outputs(staging, "new")
    assert list(commit_steps(staging, out)) == STEPS
    assert set(_state(out).values()) == {"new"}
    assert sorted(p.name for p in out.iterdir()) == [ERRORS_FILE, FACES_DIR, SUMMARY_FILE]


@pytest.mark.parametrize("previous", [True, False], ids=["replace", "first-run"])
@pytest.mark.parametrize("done", range(len(STEPS) + 1))
def test_recover_after_a_kill_between_commit_steps(tmp_path: Path, done: int, previous: bool) -> None:
    out = tmp_path / "out"
    out.mkdir()
    if previous:
        _write_outputs(out, "old")
    old_state = _state(out)
    staging = staging_dir(out, "run")
    _write_outputs(staging, "new")
    expected = STEPS if previous else [s for s in STEPS if s != "faces-aside"]  # nothing to move aside
    done = min(done, len(expected))
    steps = commit_steps(staging, out)
    taken = [next(steps) for _ in range(done)]
    assert taken == expected[:done]
    steps.close()  # the process "dies" here: nothing after the last step runs

    recover(out)
    state = _state(out)
    if done == 0:  # killed before the journal: the commit never started
        assert state == old_state
    else:  # the journal was written: the commit is completed
        assert state == {
            f"{FACES_DIR}/source=tcs/part-00000.parquet": "new",
            ERRORS_FILE: "new",
            SUMMARY_FILE: "new",
        }
    assert not (out / COMMIT_JOURNAL).exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
