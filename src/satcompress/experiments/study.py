"""One results store per study: an SQLite index of every stage, records and runs beside it.

A study folder holds everything a study produced::

    study/
      study.sqlite            the index (WAL mode: readers never wait, writers take turns)
      runs/<kind>-<key>/      each stage's run directory (model, card, record.json...)
      records/<key>.json      each finished stage's record (schema satcompress.record/1)
      imported/<file>.json    results files loaded by ``satcompress study import``

Every stage execution has a **key**: the SHA-256 of what it reads (the key of the stage it
starts from, or the card hash of a checkpoint), the data (dataset, image size and split
fingerprint) and its settings (:func:`stage_key`). A finished stage under the same key is
reused; an interrupted one (its process gone) is claimed again and resumed; a stage that
another live process is running is waited for. Claims, results and imports are single
SQLite transactions (``BEGIN IMMEDIATE`` with a busy timeout), so several processes can
write one study at once and none loses the other's rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import glob
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from satcompress.utils.io import atomic_write_json, read_json

__all__ = ["KEY_FORMAT", "Claim", "Study", "StageRow", "experiment_label", "stage_key"]

#: Tag hashed into every key; bumped when what a key covers changes meaning.
KEY_FORMAT = "satcompress.stage-key/1"
DB_FILE = "study.sqlite"
SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stages (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    run_dir TEXT NOT NULL,
    spec TEXT NOT NULL,
    input_key TEXT,
    owner TEXT,
    heartbeat REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    started TEXT,
    finished TEXT,
    seconds REAL,
    card_hash TEXT,
    record_file TEXT,
    details TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    record_id TEXT NOT NULL,
    stage_key TEXT REFERENCES stages (key),
    model TEXT,
    dataset TEXT,
    format TEXT,
    accuracy REAL,
    size_bytes INTEGER,
    params INTEGER,
    macs INTEGER,
    record TEXT NOT NULL,
    added TEXT NOT NULL,
    UNIQUE (source, record_id)
);
CREATE TABLE IF NOT EXISTS bindings (
    experiment TEXT NOT NULL,
    preset TEXT NOT NULL,
    stage TEXT NOT NULL,
    key TEXT NOT NULL,
    updated TEXT NOT NULL,
    PRIMARY KEY (experiment, preset, stage)
);
CREATE TABLE IF NOT EXISTS data_sources (
    spec TEXT PRIMARY KEY,
    stamp TEXT NOT NULL,
    source TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_stage ON records (stage_key);
"""

#: ``records.source`` of the rows a stage of the study wrote.
STAGE_SOURCE = "stage"


def stage_key(kind: str, input_ref: Any, data: Any, settings: Mapping[str, Any]) -> str:
    """The key of one stage execution: SHA-256 over its canonical JSON.

    Args:
        kind: The stage (``train``, ``prune``...).
        input_ref: What it starts from: ``{"key": <upstream key>}``, ``{"card": <hash>}`` or
            None (trained from scratch).
        data: The data it reads (dataset, image size, seed, split fingerprint).
        settings: Its settings (serialized configs; references to other stages as keys).

    Returns:
        64 hex digits.
    """
    payload = {
        "format": KEY_FORMAT,
        "stage": kind,
        "input": input_ref,
        "data": data,
        "settings": settings,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class StageRow:
    """One row of the ``stages`` table.

    Attributes:
        key: The stage key.
        kind: The stage.
        status: ``running``, ``done`` or ``failed``.
        run_dir: Its run directory (absolute).
        spec: What the key hashes.
        input_key: The key of the stage it started from (None for a checkpoint or scratch).
        owner: ``host:pid`` of the process that runs or ran it.
        heartbeat: When that process last said it is alive (seconds since the epoch).
        attempts: How many times it was started.
        seconds: Once done, the wall time that made it: the attempt that finished it and,
            if that one resumed, the attempts it continued (an interrupted attempt counts
            to its last heartbeat, a failed one to its failure). While not done, the time
            of the attempts before the current one.
        record: Its record (None for stages that measure nothing, or not yet done).
        details: What the stage returned besides its record (JSON-ready), if anything.
        error: The error of the last failed attempt.
    """

    key: str
    kind: str
    status: str
    run_dir: Path
    spec: dict[str, Any]
    input_key: str | None
    owner: str | None
    heartbeat: float | None
    attempts: int
    seconds: float | None
    record: dict[str, Any] | None
    details: Any
    error: str | None


@dataclasses.dataclass(frozen=True)
class Claim:
    """The answer to :meth:`Study.claim`.

    Attributes:
        state: ``done`` (reuse it), ``run`` (this process runs it now) or ``busy`` (another
            live process runs it: wait, then claim again).
        row: The stage's row as it stood.
        resume: ``run`` only: an earlier attempt was interrupted or failed, its run
            directory may hold what it finished.
    """

    state: str
    row: StageRow | None
    resume: bool = False


def _spent(row: sqlite3.Row) -> float:
    """Wall time of a stage's attempts so far: the earlier ones' and its last one's.

    The last attempt ran from ``started`` to its failure (``finished``) or, interrupted, to
    its last heartbeat (at most one heartbeat period short).
    """
    last = 0.0
    if row["started"] and row["status"] != "done":
        start = dt.datetime.fromisoformat(row["started"]).timestamp()
        end = (
            dt.datetime.fromisoformat(row["finished"]).timestamp()
            if row["status"] == "failed" and row["finished"]
            else row["heartbeat"] or start
        )
        last = max(0.0, end - start)
    return (row["seconds"] or 0.0) + last


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Study:
    """The results store of one study (see the module docstring for the layout).

    Args:
        root: The study folder (created if missing).
        timeout: Seconds a writer waits for another one's transaction before giving up.
        stale_after: Seconds without a heartbeat after which a running stage of another
            host counts as interrupted (on this host a gone process counts at once).
    """

    def __init__(
        self, root: str | Path, *, timeout: float = 120.0, stale_after: float = 300.0
    ) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.timeout, self.stale_after = timeout, stale_after
        self._db = self._connect()
        self._create()

    # --- connection -----------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The SQLite file."""
        return self.root / DB_FILE

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
        return db

    def _create(self) -> None:
        with self._write() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema', ?)", (SCHEMA_VERSION,)
            )
            found = db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()[0]
        if found != SCHEMA_VERSION:
            raise ValueError(
                f"{self.path} is a study of schema {found}; this satcompress reads schema "
                f"{SCHEMA_VERSION}"
            )

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding SQLite's write lock from its first statement."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def __enter__(self) -> Study:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- stages ---------------------------------------------------------------------------

    def run_dir(self, kind: str, key: str) -> Path:
        """The run directory of a stage: ``runs/<kind>-<first 16 hex digits of its key>``."""
        return self.root / "runs" / f"{kind}-{key[:16]}"

    def get(self, key: str) -> StageRow | None:
        """The row of a stage key, or None."""
        row = self._db.execute("SELECT * FROM stages WHERE key = ?", (key,)).fetchone()
        return None if row is None else self._row(row)

    def stages(self, status: str | None = None) -> list[StageRow]:
        """Every stage row (of one status), oldest first."""
        query, args = "SELECT * FROM stages", ()
        if status is not None:
            query, args = query + " WHERE status = ?", (status,)
        return [self._row(r) for r in self._db.execute(query + " ORDER BY rowid", args)]

    def claim(
        self, key: str, kind: str, spec: Mapping[str, Any], input_key: str | None = None
    ) -> Claim:
        """Decide, atomically, whether this process runs the stage ``key``.

        Args:
            key: The stage key.
            kind: The stage.
            spec: What the key hashes (stored for reading, never parsed back).
            input_key: The key of the stage it starts from.

        Returns:
            ``done`` if it finished before, ``busy`` if a live process runs it, else ``run``
            (the row now names this process as its owner).
        """
        with self._write() as db:
            found = db.execute("SELECT * FROM stages WHERE key = ?", (key,)).fetchone()
            row = None if found is None else self._row(found)
            if row is not None and row.status == "done":
                return Claim("done", row)
            if row is not None and row.status == "running" and self.alive(row):
                return Claim("busy", row)
            run_dir = self.run_dir(kind, key)
            earlier = None if found is None else _spent(found)
            db.execute(
                "INSERT INTO stages (key, kind, status, run_dir, spec, input_key, owner, "
                "heartbeat, attempts, started) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, 1, ?) "
                "ON CONFLICT (key) DO UPDATE SET status = 'running', owner = excluded.owner, "
                "heartbeat = excluded.heartbeat, attempts = attempts + 1, "
                "started = excluded.started, error = NULL, seconds = ?",
                (key, kind, self._relative(run_dir), json.dumps(spec, sort_keys=True,
                 default=str), input_key, _owner(), time.time(), _now(), earlier),
            )  # fmt: skip
        return Claim("run", row, resume=row is not None)

    def wait(self, key: str, poll: float = 2.0) -> StageRow:
        """Wait while another live process runs ``key``; its row once it stopped running."""
        while True:
            row = self.get(key)
            if row is None or row.status != "running" or not self.alive(row):
                return row  # type: ignore[return-value]
            time.sleep(poll)

    def finish(
        self,
        key: str,
        record: Mapping[str, Any] | None,
        *,
        card_hash: str | None = None,
        details: Any = None,
        seconds: float | None = None,
        resumed: bool = False,
    ) -> None:
        """Mark a claimed stage done, with its record (written to ``records/<key>.json``).

        Args:
            key: The stage key.
            record: Its record (None for a stage that measures nothing).
            card_hash: The hash of the card of the model it wrote.
            details: What else it returned (JSON-ready).
            seconds: Wall time of this attempt.
            resumed: This attempt continued earlier ones: their time is added to it.

        Raises:
            ValueError: If the record breaks the record schema.
        """
        record_file = None
        if record is not None:
            record = validate_record(dict(record))
            record_file = self.root / "records" / f"{key}.json"
            atomic_write_json(record_file, record)
        with self._write() as db:
            db.execute(
                "UPDATE stages SET status = 'done', finished = ?, "
                "seconds = CASE WHEN ? THEN COALESCE(seconds, 0) + ? ELSE ? END, "
                "card_hash = ?, "
                "record_file = ?, details = ?, error = NULL, heartbeat = ? WHERE key = ?",
                (_now(), resumed and seconds is not None, seconds, seconds, card_hash,
                 record_file and self._relative(record_file), json.dumps(details, default=str),
                 time.time(), key),
            )  # fmt: skip
            if record is not None:
                self._put_record(db, STAGE_SOURCE, key, key, record)

    def adopt(
        self,
        key: str,
        kind: str,
        record: Mapping[str, Any] | None,
        *,
        details: Any = None,
        seconds: float | None = None,
        input_key: str | None = None,
        source: str = "",
    ) -> bool:
        """Count a stage finished elsewhere (its exported record) as finished here.

        Its run directory stays empty: nothing reads it unless a stage still to run starts
        from its model, and then the experiment runs it again (its files only: it stays
        finished, its record replaced when the rerun finishes).

        Args:
            key: The stage key the record was exported under.
            kind: The stage.
            record: Its record (None for a stage that measures nothing).
            details: What else it returned (JSON-ready).
            seconds: Its stage time where it ran.
            input_key: The key of the stage it started from (an analysis: what it measured).
            source: Where the record came from (stored as the stage's spec).

        Returns:
            False if the study holds that stage finished already (nothing changes).

        Raises:
            ValueError: If the record breaks the record schema.
        """
        row = self.get(key)
        if row is not None and row.status == "done":
            return False
        if row is not None and row.status == "running" and self.alive(row):
            return False
        with self._write() as db:
            db.execute(
                "INSERT INTO stages (key, kind, status, run_dir, spec, input_key, attempts) "
                "VALUES (?, ?, 'running', ?, ?, ?, 0) ON CONFLICT (key) DO UPDATE SET "
                "status = 'running', spec = excluded.spec, input_key = excluded.input_key, "
                "started = NULL, heartbeat = NULL",
                (key, kind, self._relative(self.run_dir(kind, key)),
                 json.dumps({"adopted_from": source}), input_key),
            )  # fmt: skip
        self.finish(key, record, details=details, seconds=seconds)
        return True

    def fail(self, key: str, error: BaseException | str) -> None:
        """Mark a claimed stage failed (rerunning the experiment retries it)."""
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        with self._write() as db:
            db.execute(
                "UPDATE stages SET status = 'failed', finished = ?, error = ? WHERE key = ?",
                (_now(), text, key),
            )

    @contextlib.contextmanager
    def heartbeat(self, key: str, every: float = 30.0) -> Iterator[None]:
        """While the block runs, tell other processes every ``every`` s that ``key`` is alive."""
        stop = threading.Event()

        def beat() -> None:
            db = self._connect()  # a connection belongs to its thread
            try:
                while not stop.wait(every):
                    db.execute(
                        "UPDATE stages SET heartbeat = ? WHERE key = ? AND owner = ?",
                        (time.time(), key, _owner()),
                    )
            finally:
                db.close()

        thread = threading.Thread(target=beat, name=f"heartbeat-{key[:8]}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def alive(self, row: StageRow) -> bool:
        """Whether the process that claimed a running stage still runs it."""
        host, _, pid = (row.owner or "").rpartition(":")
        if row.owner == _owner():
            return False  # this process: its earlier attempt is over
        fresh = row.heartbeat is not None and time.time() - row.heartbeat < self.stale_after
        if host != socket.gethostname() or not pid.isdigit():
            return fresh
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return fresh

    # --- records --------------------------------------------------------------------------

    def records(self, source: str | None = None) -> list[dict[str, Any]]:
        """Every record in the study (or of one source: ``stage`` or an imported file)."""
        query, args = "SELECT record FROM records", ()
        if source is not None:
            query, args = query + " WHERE source = ?", (source,)
        return [json.loads(r[0]) for r in self._db.execute(query + " ORDER BY id", args)]

    def sources(self) -> dict[str, int]:
        """Record counts by source."""
        rows = self._db.execute("SELECT source, COUNT(*) FROM records GROUP BY source")
        return {source: count for source, count in rows}

    def import_results(self, pattern: str | Path) -> dict[str, int]:
        """Load results files (JSON lists of records, as ``RecordList`` writes) into the study.

        Each file is copied to ``imported/`` and each record indexed, tagged with the file
        it came from; importing a file again replaces its rows (no duplicates). Files that
        hold no list of records (diagnostics) and records that break the schema are skipped.

        Args:
            pattern: A file or a glob pattern (``results/*.json``).

        Returns:
            Records indexed per file.

        Raises:
            FileNotFoundError: If nothing matches ``pattern``.
        """
        names = sorted(glob.glob(str(pattern)))
        if not names:
            raise FileNotFoundError(f"no results file matches {pattern}")
        counts = {}
        for name in names:
            path = Path(name)
            records = read_json(path) if path.is_file() else None
            if not isinstance(records, list):
                continue
            valid = [r for r in records if isinstance(r, dict) and _valid(r)]
            source = str(path.resolve())
            self._copy_imported(path)
            with self._write() as db:
                db.execute("DELETE FROM records WHERE source = ?", (source,))
                for index, record in enumerate(valid):
                    record_id = str(record.get("id", index))
                    self._put_record(db, source, record_id, None, record)
            counts[source] = len(valid)
        return counts

    def _copy_imported(self, path: Path) -> None:
        target = self.root / "imported" / path.name
        if target.is_file() and target.read_bytes() != path.read_bytes():
            digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
            target = target.with_name(f"{path.stem}-{digest}{path.suffix}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)

    @staticmethod
    def _put_record(
        db: sqlite3.Connection,
        source: str,
        record_id: str,
        stage: str | None,
        record: Mapping[str, Any],
    ) -> None:
        db.execute(
            "INSERT INTO records (source, record_id, stage_key, model, dataset, format, "
            "accuracy, size_bytes, params, macs, record, added) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, record_id) DO "
            "UPDATE SET stage_key = excluded.stage_key, model = excluded.model, "
            "dataset = excluded.dataset, format = excluded.format, "
            "accuracy = excluded.accuracy, size_bytes = excluded.size_bytes, "
            "params = excluded.params, macs = excluded.macs, record = excluded.record, "
            "added = excluded.added",
            (source, record_id, stage, record.get("model"), record.get("dataset"),
             record.get("format"), record.get("accuracy"), record.get("size_bytes"),
             record.get("params"), record.get("macs"), json.dumps(record, default=str),
             _now()),
        )  # fmt: skip

    # --- experiments and data -------------------------------------------------------------

    def bind(self, experiment: str, preset: str, names: Mapping[str, str]) -> None:
        """Remember which key each named stage of an experiment (and preset) has now.

        ``names`` replaces what was bound before, in its order (the file's): a stage the file
        no longer has is no longer the experiment's.
        """
        with self._write() as db:
            db.execute(
                "DELETE FROM bindings WHERE experiment = ? AND preset = ?", (experiment, preset)
            )
            db.executemany(
                "INSERT INTO bindings (experiment, preset, stage, key, updated) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (experiment, preset, stage) DO UPDATE "
                "SET key = excluded.key, updated = excluded.updated",
                [(experiment, preset, name, key, _now()) for name, key in names.items()],
            )

    def bindings(self, experiment: str, preset: str) -> dict[str, str]:
        """The key of each named stage of an experiment, as last run, in file order."""
        rows = self._db.execute(
            "SELECT stage, key FROM bindings WHERE experiment = ? AND preset = ? ORDER BY rowid",
            (experiment, preset),
        )
        return {stage: key for stage, key in rows}

    def progress(self, experiment: str, preset: str) -> tuple[int, int]:
        """``(finished stages, stages)`` of an experiment as last run."""
        done, total = self._db.execute(
            "SELECT COALESCE(SUM(s.status = 'done'), 0), COUNT(*) FROM bindings b "
            "LEFT JOIN stages s ON s.key = b.key WHERE b.experiment = ? AND b.preset = ?",
            (experiment, preset),
        ).fetchone()
        return int(done), int(total)

    def experiment_labels(self) -> str:
        """Every experiment run into the study, as :func:`experiment_label` names them."""
        return ", ".join(experiment_label(n, p) for n, p in self.experiments()) or "none"

    def experiments(self) -> list[tuple[str, str]]:
        """``(experiment, preset)`` of every experiment run into the study, by name."""
        rows = self._db.execute(
            "SELECT DISTINCT experiment, preset FROM bindings ORDER BY experiment, preset"
        )
        return [(experiment, preset) for experiment, preset in rows]

    def data_source(self, spec: Mapping[str, Any], stamp: str) -> dict[str, Any] | None:
        """The loaded data's description saved for ``spec``, if the data is unchanged."""
        row = self._db.execute(
            "SELECT stamp, source FROM data_sources WHERE spec = ?", (_canonical(spec),)
        ).fetchone()
        return json.loads(row["source"]) if row is not None and row["stamp"] == stamp else None

    def save_data_source(
        self, spec: Mapping[str, Any], stamp: str, source: Mapping[str, Any]
    ) -> None:
        """Save what ``spec`` loaded as (split fingerprint included) while ``stamp`` holds."""
        with self._write() as db:
            db.execute(
                "INSERT INTO data_sources (spec, stamp, source, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (spec) DO UPDATE SET stamp = excluded.stamp, "
                "source = excluded.source, updated = excluded.updated",
                (_canonical(spec), stamp, _canonical(source), _now()),
            )

    # --- helpers --------------------------------------------------------------------------

    def _relative(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.root).as_posix()

    def _row(self, row: sqlite3.Row) -> StageRow:
        record_file = row["record_file"]
        record = read_json(self.root / record_file) if record_file else None
        return StageRow(
            key=row["key"],
            kind=row["kind"],
            status=row["status"],
            run_dir=self.root / row["run_dir"],
            spec=json.loads(row["spec"]),
            input_key=row["input_key"],
            owner=row["owner"],
            heartbeat=row["heartbeat"],
            attempts=int(row["attempts"]),
            seconds=row["seconds"],
            record=record,
            details=json.loads(row["details"]) if row["details"] else None,
            error=row["error"],
        )


def experiment_label(name: str, preset: str | None) -> str:
    """``name@preset`` (just ``name`` without a preset): how files and reports name a run."""
    return f"{name}@{preset}" if preset else name


def _canonical(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def validate_record(record: dict[str, Any]) -> dict[str, Any]:
    """:func:`satcompress.evaluate.record.validate_record`, imported when first needed."""
    from satcompress.evaluate.record import validate_record as validate

    return validate(record)


def _valid(record: dict[str, Any]) -> bool:
    try:
        validate_record(record)
    except (ValueError, TypeError):
        return False
    return True
