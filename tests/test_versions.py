"""The datastore as versions, in this process: every version's bytes kept once by content,
paths showing the current version, and inputs algorithms cannot change the datastore
through."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from pipeline.engine import datastore
from pipeline.operations import facade, lineage, queries
from tests.support import InProcessWorker, assert_one_line_error, run_cli

DEFINITION = """
name: scribbling
description: An algorithm that writes into its inputs.
data_file_types:
  note: {location: "{unit}/in", pattern: "*.txt"}
  loud: {location: "{unit}/out", pattern: "*.out"}
nodes:
  - name: scribble
    algorithm: tests.algorithms:scribble
    inputs: [note]
    outputs: [loud]
"""


def objects(root: Path) -> dict[str, Path]:
    """The object store's files by name (their SHA-256)."""
    return {
        path.name: path for path in (root / datastore.OBJECTS_DIR).glob("??/*") if path.is_file()
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def scribbling(home: Path, tmp_path: Path) -> Path:
    definition = tmp_path / "scribbling.yaml"
    definition.write_text(DEFINITION)
    facade.import_definitions([definition])
    root = home / "datastore"
    (root / "u1" / "in").mkdir(parents=True)
    for name in ("a", "b"):
        (root / "u1" / "in" / f"{name}.txt").write_text(f"note {name}")
    return root


def test_an_algorithm_writing_into_its_inputs_changes_no_stored_version(
    home: Path, worker: InProcessWorker, tmp_path: Path
) -> None:
    root = scribbling(home, tmp_path)
    first = facade.submit("scribbling")["id"]
    worker.drain()
    second = facade.submit("scribbling")["id"]
    worker.drain()

    for instance in (first, second):
        assert queries.get_instance(instance)["state"] == "COMPLETED"
    assert (root / "u1" / "in" / "a.txt").read_text() == "note a", "the datastore unchanged"
    for row in lineage.files(unit="u1", history=True):
        kept = datastore.object_path(root, row["sha256"])
        assert sha256(kept) == row["sha256"], f"{row['path']}: bytes match the ledger"
        assert sha256(root / row["path"]) == row["sha256"] or not row["current"]
    outputs = sorted((root / "u1" / "out").iterdir())
    assert [p.read_text() for p in outputs] == ["NOTE A SCRIBBLED", "NOTE B SCRIBBLED"]
    [subtask] = [
        s for s in queries.list_subtasks(queries.list_tasks(second)[0]["id"]) if s["index"] == 0
    ]
    assert subtask["state"] == "COMPLETE"


def test_identical_bytes_are_stored_once_and_every_version_stays_readable(
    home: Path, worker: InProcessWorker, tmp_path: Path
) -> None:
    root = scribbling(home, tmp_path)
    facade.submit("scribbling")["id"]
    worker.drain()
    facade.submit("scribbling")["id"]
    worker.drain()
    (root / "u1" / "in" / "a.txt").write_text("note a, revised")  # by hand: found anew
    third = facade.submit("scribbling")["id"]
    worker.drain()

    history = lineage.files(unit="u1", history=True)
    stored = {row["sha256"] for row in history}
    assert len(history) == 2 + 2 + 2 + 1 + 2, "inputs found (2, then 1 revised), outputs x3"
    everything = {row["sha256"] for row in lineage.files(history=True, limit=None)}
    assert stored <= everything
    assert set(objects(root)) == everything, "one object per distinct content, no more"
    revised = [r for r in history if r["path"] == "u1/out/a.out"]
    assert [r["current"] for r in revised] == [False, False, True]
    assert revised[-1]["instance_id"] == third
    old = datastore.object_path(root, revised[0]["sha256"])
    assert old.read_text() == "NOTE A SCRIBBLED", "the superseded version is still kept"
    assert (root / "u1" / "out" / "a.out").read_text() == "NOTE A, REVISED SCRIBBLED"
    assert not os.access(old, os.W_OK) or os.geteuid() == 0
    assert old.stat().st_mode & 0o777 == datastore.read_only()


def age_everything(home: Path, days: float) -> None:
    """Make every version, instance and task directory ``days`` old."""
    from datetime import timedelta

    from sqlalchemy import update

    from pipeline.database import transaction
    from pipeline.domain.models import DatastoreFile, PipelineInstance, Task, utcnow

    then = utcnow() - timedelta(days=days)
    with transaction() as session:
        session.execute(update(DatastoreFile).values(stored_at=then))
        session.execute(update(PipelineInstance).values(created_at=then))
        session.execute(update(Task).values(updated_at=then))
    stamp = then.timestamp()
    for directory in (home / "tasks").iterdir():
        os.utime(directory, (stamp, stamp))


def test_prune_keeps_the_policys_versions_and_lineage_still_answers(
    home: Path, worker: InProcessWorker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = scribbling(home, tmp_path)
    for revision in range(4):  # four versions of a.txt, and so of a.out
        (root / "u1" / "in" / "a.txt").write_text(f"note a, revision {revision}")
        facade.submit("scribbling")
        worker.drain()
    versions = lineage.files(path="u1/out/a.out", history=True)
    assert len(versions) == 4
    age_everything(home, days=40)
    before = {p.name for p in objects(root).values()}

    preview = run_cli(capsys, "datastore", "prune", "--keep-last", "2", "--dry-run", "--json")
    assert preview.returncode == 0, preview.stderr
    would = json.loads(preview.stdout)
    # 2 versions each of a.txt and a.out, and 2 of b.out's 4 identical ones (whose bytes,
    # shared with the kept ones, stay).
    assert (would["dry_run"], would["versions"], would["objects"]) == (True, 6, 4)
    assert {p.name for p in objects(root).values()} == before, "a dry run removes nothing"

    done = run_cli(capsys, "datastore", "prune", "--keep-last", "2")
    assert done.returncode == 0 and "removed the bytes of 6 versions (4 objects)" in done.stdout
    after = lineage.files(path="u1/out/a.out", history=True)
    assert [bool(f["pruned_at"]) for f in after] == [True, True, False, False]
    for row in after:
        assert datastore.object_path(root, row["sha256"]).exists() == (not row["pruned_at"])
    assert (root / "u1" / "out" / "a.out").read_text() == "NOTE A, REVISION 3 SCRIBBLED"
    tree = run_cli(capsys, "lineage", "u1/out/a.out", "--version", after[0]["id"])
    assert tree.returncode == 0
    assert "(superseded, pruned)" in tree.stdout.splitlines()[0]
    again = run_cli(capsys, "datastore", "prune", "--keep-last", "2", "--json")
    assert json.loads(again.stdout)["versions"] == 0, "nothing left to prune"


def test_prune_keeps_what_a_recent_instance_consumed(
    home: Path, worker: InProcessWorker, tmp_path: Path
) -> None:
    root = scribbling(home, tmp_path)
    for revision in range(3):
        (root / "u1" / "in" / "a.txt").write_text(f"note a, revision {revision}")
        facade.submit("scribbling")
        worker.drain()
    age_everything(home, days=40)
    recent = lineage.files(path="u1/in/a.txt", history=True)[0]
    # An instance submitted today consumed the oldest version (a restart of an old run).
    from pipeline.database import transaction
    from pipeline.domain.models import FileConsumption, Task

    facade.submit("scribbling")
    worker.drain()
    with transaction() as session:
        task = session.query(Task).order_by(Task.id.desc()).first()
        session.add(
            FileConsumption(task_id=task.id, attempt=1, subtask_index=9, file_id=recent["id"])
        )
    pruned = facade.prune_datastore(keep_last=1)
    kept = {f["id"]: f["pruned_at"] for f in lineage.files(path="u1/in/a.txt", history=True)}
    assert kept[recent["id"]] is None, "consumed by an instance submitted since the cut-off"
    assert pruned["versions"] >= 1


def test_bad_retention_arguments_are_one_line_errors(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for args, fragment in [
        (["datastore", "prune", "--keep-since", "soon"], "'soon' is neither a date"),
        (["datastore", "prune", "--keep-since", "2999-01-01"], "'2999-01-01' is in the future"),
        (["taskdirs", "prune", "--older-than", "x"], "'x' is neither a date"),
        (["taskdirs", "prune", "--older-than", "99999999d"], "is further back than any date"),
    ]:
        assert_one_line_error(run_cli(capsys, *args), fragment)


def test_taskdirs_prune_removes_only_directories_no_restart_can_want(
    home: Path, worker: InProcessWorker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scribbling(home, tmp_path)
    facade.submit("scribbling")
    worker.drain()
    facade.set_parameters("algorithm", ["throw_exception_subtask_0=true"])
    failed = facade.submit("sample", None, "permuter")["id"]
    worker.drain()
    age_everything(home, days=10)
    before = sorted(p.name for p in (home / "tasks").iterdir())
    assert len(before) == 3

    result = run_cli(capsys, "taskdirs", "prune", "--older-than", "7d", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["directories"] == 1
    left = sorted(p.name for p in (home / "tasks").iterdir())
    assert all(name.startswith(f"{failed}-") for name in left), "failed tasks keep theirs"
    facade.restart_failed(failed, "resubmit")  # still possible: its directories are there
    worker.drain()


def test_prune_through_the_http_api(home: Path, worker: InProcessWorker, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from pipeline.interfaces.api import create_app
    from pipeline.settings import API_PREFIX

    scribbling(home, tmp_path)
    facade.submit("scribbling")
    worker.drain()
    with TestClient(create_app("token"), headers={"Authorization": "Bearer token"}) as http:
        answer = http.post(f"{API_PREFIX}/datastore/prune", json={"dry_run": True})
        assert answer.status_code == 200, answer.text
        assert answer.json()["dry_run"] is True
        pruned = http.post(f"{API_PREFIX}/taskdirs/prune", json={"older_than_days": 0})
        assert (pruned.status_code, pruned.json()["directories"]) == (200, 1), pruned.text
        refused = http.post(f"{API_PREFIX}/taskdirs/prune", json={"older_than_days": -1})
        assert refused.status_code == 422


def test_file_listings_are_complete_or_paged_explicitly(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """1,200 files, more than a table shows: JSON lists every one; the API pages them
    with the total in X-Total-Count; the table says how many it left out."""
    from fastapi.testclient import TestClient

    from pipeline.database import transaction
    from pipeline.engine.datastore_ledger import FOUND, _insert, _row
    from pipeline.interfaces.api import create_app
    from pipeline.settings import API_PREFIX

    many = 1200
    with transaction() as session:
        _insert(
            session,
            [
                _row(f"u9/in/{i:05d}.txt", "note", "u9", FOUND)
                | {"size": 1, "sha256": f"{i:064x}", "mtime_ns": 1}
                for i in range(many)
            ],
        )
    listed = run_cli(capsys, "files", "--unit", "u9", "--json")
    assert len(json.loads(listed.stdout)) == many
    table = run_cli(capsys, "files", "--unit", "u9")
    assert f"showing 1,000 of {many:,} files (--limit N shows more)" in table.stdout
    with TestClient(create_app("token"), headers={"Authorization": "Bearer token"}) as http:
        page = http.get(f"{API_PREFIX}/files", params={"unit": "u9", "limit": 500, "offset": 1000})
        assert page.status_code == 200
        assert page.headers["X-Total-Count"] == str(many)
        assert [f["path"] for f in page.json()][0] == "u9/in/01000.txt"
        assert len(page.json()) == 200
        everything = http.get(f"{API_PREFIX}/files", params={"unit": "u9"})
        assert len(everything.json()) == many


def test_large_inputs_are_links_to_the_read_only_bytes_unless_the_worker_is_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.engine import taskdir

    large = tmp_path / "large"
    large.write_bytes(b"x" * (taskdir.INPUT_COPY_BYTES + 1))
    os.chmod(large, datastore.OBJECT_MODE)
    small = tmp_path / "small"
    small.write_bytes(b"x")
    for user, large_linked in ((1000, True), (0, False)):
        monkeypatch.setattr(os, "geteuid", lambda user=user: user)
        given = tmp_path / f"task-{user}" / "st-0"
        given.parent.mkdir()
        taskdir.build(given, [(large, "large.dat"), (small, "small.dat")])
        linked = os.stat(given / "large.dat").st_ino == os.stat(large).st_ino
        assert linked == large_linked, f"as user {user}"
        assert os.stat(given / "small.dat").st_ino != os.stat(small).st_ino, "a copy"
        assert not os.stat(given / "small.dat").st_mode & 0o222, "read-only"


def test_a_placement_over_a_path_survives_another_store_emptying_the_staging_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two stores replace files of one directory at once: one removes the staging
    directory the moment it is empty, just after the other made it and before it links
    its file there (seen as 'storing failed: No such file or directory' with 20 instances
    at once). The placement makes the directory again and the path shows the new bytes."""
    root, staged = _new_version_over_old(tmp_path)
    destination = Path(staged.destination)
    link, emptied = os.link, []

    def other_store_empties_it_first(source: str, target: str) -> None:
        staging = os.path.dirname(target)
        if os.path.basename(staging) == datastore.STAGING_DIR and not emptied:
            os.rmdir(staging)  # the other store's rmdir, the directory empty then
            emptied.append(staging)
        link(source, target)

    monkeypatch.setattr(datastore.os, "link", other_store_empties_it_first)
    datastore.place(staged)
    assert emptied, "the race was not played"
    assert destination.read_bytes() == b"new" and datastore.shows(staged)


def test_a_store_replacing_many_files_of_a_directory_leaves_no_staging_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store replaces the files of one directory through one staging directory, made
    once; another store emptying it halfway (its rmdir) costs a making again, not a file,
    and the staging directory is gone once every path shows its new bytes."""
    root = tmp_path / "datastore"
    (root / "set-1").mkdir(parents=True)
    versions = []
    for n in range(5):
        (root / "set-1" / f"{n}.png").write_bytes(b"old")
        new = tmp_path / f"new-{n}.png"
        new.write_bytes(f"new {n}".encode())
        kept = datastore.keep(root, new)
        versions.append(
            datastore.Staged(
                kept.path,
                f"set-1/{n}.png",
                str(root / "set-1" / f"{n}.png"),
                kept.size,
                kept.sha256,
                kept.mtime_ns,
                kept.inode,
            )  # fmt: skip
        )
    link, made, emptied = os.link, [], []
    makedirs = os.makedirs

    def counted(path: str, exist_ok: bool = False) -> None:
        if os.path.basename(path) == datastore.STAGING_DIR:
            made.append(path)
        makedirs(path, exist_ok=exist_ok)

    def other_store_empties_it_at_the_third(source: str, target: str) -> None:
        staging = os.path.dirname(target)
        third = os.path.basename(target).startswith("2.png.")
        if os.path.basename(staging) == datastore.STAGING_DIR and third and not emptied:
            os.rmdir(staging)
            emptied.append(staging)
        link(source, target)

    monkeypatch.setattr(datastore.os, "link", other_store_empties_it_at_the_third)
    monkeypatch.setattr(datastore.os, "makedirs", counted)
    datastore.place_all(versions)
    assert emptied, "the race was not played"
    assert len(made) == 2, "made once, and once again after the other store's removal"
    for n, staged in enumerate(versions):
        assert Path(staged.destination).read_bytes() == f"new {n}".encode()
        assert datastore.shows(staged)
    assert not (root / "set-1" / datastore.STAGING_DIR).exists()


def test_a_placement_another_store_made_meanwhile_leaves_no_link_in_staging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another store places the same version at the path between this store's look at it
    and its rename: the rename of a link over a link of the same file does nothing and
    leaves this store's link in the staging directory; the store removes it, and the
    staging directory with it."""
    root, staged = _new_version_over_old(tmp_path)
    destination = Path(staged.destination)
    replace, raced = os.replace, []

    def the_other_store_first(source: str, target: str) -> None:
        if not raced:
            os.unlink(target)
            os.link(staged.kept, target)  # the other store's placement of the same version
            raced.append(target)
        replace(source, target)

    monkeypatch.setattr(datastore.os, "replace", the_other_store_first)
    datastore.place_all([staged])
    assert raced, "the race was not played"
    assert destination.read_bytes() == b"new" and datastore.shows(staged)
    assert not (root / "set-1" / datastore.STAGING_DIR).exists()


def _new_version_over_old(tmp_path: Path) -> tuple[Path, datastore.Staged]:
    """A datastore whose ``set-1/a.png`` holds b"old", and a version of it holding b"new",
    kept and staged: the datastore's root and the version."""
    root = tmp_path / "datastore"
    (root / "set-1").mkdir(parents=True)
    destination = root / "set-1" / "a.png"
    destination.write_bytes(b"old")
    new = tmp_path / "new.png"
    new.write_bytes(b"new")
    kept = datastore.keep(root, new)
    staged = datastore.Staged(
        kept.path, "set-1/a.png", str(destination), kept.size, kept.sha256, kept.mtime_ns,
        kept.inode,
    )  # fmt: skip
    return root, staged


def test_outputs_kept_as_subtasks_end_are_flushed_ahead_of_the_store_one_flush_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker keeping outputs starts writing them to disk on a thread of its own, so the
    store's flush (which alone makes them safe to call current) finds less to wait for;
    never two such flushes at once in a process, nor more than one every
    ``FLUSH_AHEAD_SECONDS``."""
    import threading

    started, release = [], threading.Event()

    def flush(root: Path) -> None:
        started.append((root, threading.current_thread().name))
        release.wait(30)

    monkeypatch.setattr(datastore, "flush", flush)
    monkeypatch.setattr(datastore, "FLUSH_AHEAD_SECONDS", 0.0)
    for _ in range(3):
        datastore.flush_ahead(tmp_path)
    assert started == [(tmp_path, "flush-ahead")]
    release.set()
    running = datastore._FlushAhead.thread
    assert running is not None
    running.join(30)
    datastore.flush_ahead(tmp_path)  # the first is done: another may start
    datastore._FlushAhead.thread.join(30)
    assert len(started) == 2
    monkeypatch.setattr(datastore, "FLUSH_AHEAD_SECONDS", 3600.0)
    datastore.flush_ahead(tmp_path)  # one ran within the interval: none
    assert len(started) == 2


def test_a_found_file_is_kept_as_a_whole_read_only_copy_with_nothing_left_beside_it(
    tmp_path: Path,
) -> None:
    """A file the pipeline did not write (found on disk, received) is copied into the
    object store, never linked: its object is a file of its own, read-only, at the
    source's modification time, and the object store holds nothing else (no copy half
    made, no staging directory)."""
    root = tmp_path / "datastore"
    (root / "u").mkdir(parents=True)
    source = root / "u" / "found.in"
    source.write_bytes(b"found on disk\n")
    os.utime(source, ns=(1_000_000_000, 2_000_000_000))
    size, sha, mtime_ns = datastore.fingerprint(root, source)
    kept = datastore.object_path(root, sha)
    assert (size, sha, mtime_ns) == (14, sha256(source), 2_000_000_000)
    assert kept.read_bytes() == b"found on disk\n"
    assert os.stat(kept).st_ino != os.stat(source).st_ino, "a copy, not a link"
    assert not os.stat(kept).st_mode & 0o222, "read-only"
    assert os.stat(kept).st_mtime_ns == 2_000_000_000
    left = sorted(p.relative_to(root).as_posix() for p in (root / datastore.OBJECTS_DIR).rglob("*"))
    assert left == [
        f"{datastore.OBJECTS_DIR}/{sha[:2]}",
        f"{datastore.OBJECTS_DIR}/{sha[:2]}/{sha}",
    ]
    again = datastore.keep(root, source, link=False)
    assert (again.path, again.inode) == (str(kept), os.stat(kept).st_ino), "kept once"


def test_a_copy_over_an_object_written_through_since_puts_the_right_bytes_back(
    tmp_path: Path,
) -> None:
    """An object whose size shows it was written through (as root, say) is replaced by the
    copy, whose bytes are the ones its SHA-256 names."""
    root = tmp_path / "datastore"
    root.mkdir()
    source = tmp_path / "found.in"
    source.write_bytes(b"the right bytes")
    kept = datastore.object_path(root, sha256(source))
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"written through since")
    found = datastore.keep(root, source, link=False)
    assert kept.read_bytes() == b"the right bytes"
    assert (found.path, found.inode, found.size) == (str(kept), os.stat(kept).st_ino, 15)
    assert not any(root.rglob(f"*{datastore.STAGING_DIR}*/*")), "nothing left in staging"


@pytest.mark.parametrize("unsupported", ["O_TMPFILE", "/proc"])
def test_a_copy_is_kept_where_files_cannot_be_made_without_a_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unsupported: str
) -> None:
    """Where a file cannot be made without a name (another system or file system: the
    open is refused) or named afterwards (no /proc), the copy is made in the staging
    directory and renamed into place, as whole."""
    root = tmp_path / "datastore"
    root.mkdir()
    source = tmp_path / "found.in"
    source.write_bytes(b"found")
    if unsupported == "O_TMPFILE":
        opened = os.open

        def refused(path: str, flags: int, *args: int, **kwargs: int) -> int:
            if flags & getattr(os, "O_TMPFILE", 0) == getattr(os, "O_TMPFILE", -1):
                raise OSError(95, "Operation not supported")
            return opened(path, flags, *args, **kwargs)

        monkeypatch.setattr(datastore.os, "open", refused)
    else:
        monkeypatch.setattr(datastore, "OPEN_FILES", str(tmp_path / "no-proc"))
    found = datastore.keep(root, source, link=False)
    assert Path(found.path).read_bytes() == b"found" and found.sha256 == sha256(source)
    assert not os.stat(found.path).st_mode & 0o222


def test_a_copy_that_fails_midway_leaves_no_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy that fails halfway (a full disk) raises, and leaves nothing in the object
    store that a later look could take for the file's bytes."""
    root = tmp_path / "datastore"
    root.mkdir()
    source = tmp_path / "found.in"
    source.write_bytes(b"found")

    def full(writer: int, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(datastore, "_write_all", full)
    with pytest.raises(OSError, match="No space left"):
        datastore.keep(root, source, link=False)
    objects = root / datastore.OBJECTS_DIR
    assert not [p for p in objects.rglob("*") if p.is_file()], "no object, no copy"


def test_a_small_file_whose_bytes_are_kept_already_is_read_and_not_copied_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file found with bytes the object store holds already (another unit's, an earlier
    marshal's) is read and hashed, and nothing is written: its version names the object
    there. A large one is copied as it is read, as before."""
    root = tmp_path / "datastore"
    (root / "u").mkdir(parents=True)
    first, second = root / "u" / "first.in", root / "u" / "second.in"
    first.write_bytes(b"the same bytes")
    second.write_bytes(b"the same bytes")
    kept = datastore.keep(root, first, link=False)
    written: list[str] = []
    unnamed = datastore.unnamed

    def counted(directory: str) -> int | None:
        written.append(directory)
        return unnamed(directory)

    monkeypatch.setattr(datastore, "unnamed", counted)
    again = datastore.keep(root, second, link=False)
    assert again == kept and written == [], "read, hashed, and found kept"

    large = root / "u" / "large.in"
    large.write_bytes(b"x" * (datastore.CHUNK_BYTES + 1))
    copied = datastore.keep(root, large, link=False)
    assert len(written) == 1 and Path(copied.path).read_bytes() == large.read_bytes()


@pytest.mark.parametrize("size", [0, 1, 5, datastore.CHUNK_BYTES, datastore.CHUNK_BYTES + 7])
@pytest.mark.parametrize("seen", ["as it is", "smaller", "larger"])
def test_a_copy_holds_the_whole_file_whatever_size_it_was_seen_at(
    tmp_path: Path, size: int, seen: str
) -> None:
    """A copy reads as many bytes as the file was last seen to hold, at once; a file
    that grew or shrank since is copied whole all the same."""
    root = tmp_path / "datastore"
    root.mkdir()
    source = tmp_path / "found.in"
    source.write_bytes(bytes(n % 251 for n in range(size)))
    expected = {"as it is": size, "smaller": max(0, size - 3), "larger": size + 3}[seen]
    with open(source, "rb", buffering=0) as reader:
        kept = datastore._keep_read(str(root), reader, False, expected)
    assert (kept.size, kept.sha256) == (size, sha256(source))
    assert Path(kept.path).read_bytes() == source.read_bytes()
