"""`StoryLibrary`: stories on disk, one folder each, indexed by SQLite.

Layout: ``<root>/index.sqlite3`` and ``<root>/<id>/{story.json, story.md, image.png}``. A story folder is
built under a hidden temporary name and renamed into place, so a story is either all there or not there.
The folders are the truth; the index is a cache that is checked on open and rebuilt when it is damaged or
out of step with the folders.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from PIL import Image

from engine.atomic import fsync_dir, write_bytes_atomic, write_text_atomic
from engine.errors import StoryloomError
from storyloom.library import codec
from storyloom.library.filenames import safe_filename

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from storyloom.workflow.draft import StoryDraft

log = logging.getLogger(__name__)

INDEX_NAME = "index.sqlite3"
STORY_JSON = "story.json"
STORY_MD = "story.md"
IMAGE_PNG = "image.png"
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_ID_RE = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{8}$")
_SCHEMA = """
CREATE TABLE stories (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    idea TEXT NOT NULL,
    created TEXT NOT NULL,
    has_image INTEGER NOT NULL,
    demo INTEGER NOT NULL
);
"""
EXPORT_FORMATS = ("md", "html")


class LibraryError(StoryloomError):
    """The library cannot do what was asked (unknown story, folder not writable, export target exists)."""


@dataclass(frozen=True)
class StorySummary:
    """One row of the library list."""

    id: str
    title: str
    idea: str
    created: str  # ISO 8601 UTC
    has_image: bool
    demo: bool
    folder: Path


class StoryLibrary:
    """The user's saved stories. Thread-safe within one process."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock = threading.RLock()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LibraryError(f"library folder '{self.root}' cannot be created: {exc.strerror or exc}") from exc
        self._recover()
        self._check_index()

    @property
    def index_path(self) -> Path:
        return self.root / INDEX_NAME

    # --- writing ----------------------------------------------------------------------------------------
    def save(self, draft: StoryDraft) -> str:
        """Store ``draft`` (replacing the entry ``draft.story_id`` when it exists); returns the story id.

        Sets ``draft.story_id`` and ``draft.created`` (first save only).
        """
        with self._lock:
            story_id = draft.story_id if draft.story_id and self._folder_exists(draft.story_id) else _new_id()
            created = draft.created or datetime.now(timezone.utc).isoformat(timespec="seconds")
            saved = draft.copy(story_id=story_id, created=created)
            staging = self.root / f"{_TMP_PREFIX}{story_id}-{secrets.token_hex(4)}"
            try:
                staging.mkdir()
                self._write_story_files(staging, saved)
                fsync_dir(staging)
                self._swap_in(staging, self.root / story_id)
            except OSError as exc:
                raise LibraryError(f"library folder '{self.root}' is not writable: {exc.strerror or exc}") from exc
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            self._index_upsert(saved)
            draft.story_id, draft.created = story_id, created
            return story_id

    def delete(self, story_id: str) -> None:
        with self._lock:
            folder = self._folder(story_id)
            trash = self.root / f"{_TRASH_PREFIX}{story_id}"
            os.replace(folder, trash)
            fsync_dir(self.root)
            self._index_execute("DELETE FROM stories WHERE id = ?", (story_id,))
            shutil.rmtree(trash, ignore_errors=True)

    # --- reading ----------------------------------------------------------------------------------------
    def list(self, query: str | None = None) -> builtins.list[StorySummary]:
        """Newest first; ``query`` matches title or idea (case-insensitive substring)."""
        sql = "SELECT id, title, idea, created, has_image, demo FROM stories"
        args: tuple[str, ...] = ()
        if query and query.strip():
            pattern = "%" + re.sub(r"([\\%_])", r"\\\1", query.strip()) + "%"
            sql += " WHERE title LIKE ? ESCAPE '\\' OR idea LIKE ? ESCAPE '\\'"
            args = (pattern, pattern)
        rows = self._index_query(sql + " ORDER BY created DESC, id DESC", args)
        return [StorySummary(r[0], r[1], r[2], r[3], bool(r[4]), bool(r[5]), self.root / r[0]) for r in rows]

    def get(self, story_id: str) -> StoryDraft:
        with self._lock:  # a concurrent save may be swapping the folder
            folder = self._folder(story_id)
            try:
                record = json.loads((folder / STORY_JSON).read_text(encoding="utf-8"))
                return codec.record_to_draft(record, _load_image(folder / IMAGE_PNG))
            except (OSError, ValueError, TypeError) as exc:
                raise LibraryError(f"story '{story_id}' is damaged: {exc}") from exc

    def thumbnail(self, story_id: str, size: int = 256) -> PILImage | None:
        """A thumbnail (longest side ``size``) of the story's image, or None without an image."""
        with self._lock:
            image = _load_image(self._folder(story_id) / IMAGE_PNG)
        if image is not None:
            image.thumbnail((size, size))
        return image

    # --- index ------------------------------------------------------------------------------------------
    def rebuild_index(self) -> int:
        """Rebuild the index from the story folders; returns the number of stories found."""
        with self._lock:
            rows = []
            for folder in sorted(self.root.iterdir()):
                if not (folder.is_dir() and _ID_RE.match(folder.name)):
                    continue
                try:
                    record = json.loads((folder / STORY_JSON).read_text(encoding="utf-8"))
                    draft = codec.record_to_draft(record, None)
                except (OSError, ValueError, TypeError) as exc:
                    log.warning("library: skipping damaged story folder %s: %s", folder, exc)
                    continue
                rows.append(_index_row(draft.copy(story_id=folder.name), (folder / IMAGE_PNG).exists()))
            staging = self.root / f"{_TMP_PREFIX}{INDEX_NAME}"
            staging.unlink(missing_ok=True)
            with contextlib.closing(sqlite3.connect(staging)) as db, db:
                db.executescript(_SCHEMA)
                db.executemany("INSERT INTO stories VALUES (?, ?, ?, ?, ?, ?)", rows)
            os.replace(staging, self.index_path)
            fsync_dir(self.root)
            log.info("library: index rebuilt with %d stories", len(rows))
            return len(rows)

    # --- export -----------------------------------------------------------------------------------------
    def export(self, story_id: str, fmt: Literal["md", "html"], dest: str | Path, overwrite: bool = False) -> Path:
        """Write the story as Markdown or a self-contained HTML page.

        ``dest`` is a folder (the file name comes from the sanitised title) or a file path. Markdown gets
        its image as ``<name>.png`` next to it. An existing file is refused with LibraryError unless
        ``overwrite``. Returns the written page.
        """
        if fmt not in EXPORT_FORMATS:
            raise LibraryError(f"export format '{fmt}' is not one of {', '.join(EXPORT_FORMATS)}")
        draft = self.get(story_id)
        dest = Path(dest)
        page = dest / f"{safe_filename(draft.title)}.{fmt}" if dest.is_dir() else dest
        if not page.parent.is_dir():
            raise LibraryError(f"export folder '{page.parent}' does not exist")
        image_file = page.with_suffix(".png") if fmt == "md" and draft.image is not None else None
        targets = [p for p in (page, image_file) if p is not None]
        if not overwrite:
            for target in targets:
                if target.exists():
                    raise LibraryError(f"'{target}' already exists; choose another name or allow overwriting")
        try:
            if fmt == "html":
                write_text_atomic(page, codec.html_page(draft))
            else:
                if image_file is not None:
                    write_bytes_atomic(image_file, codec.png_bytes(draft))
                link = image_file.name.replace(" ", "%20") if image_file else None
                write_text_atomic(page, codec.markdown_page(draft, link))
        except OSError as exc:
            raise LibraryError(f"cannot write '{page}': {exc.strerror or exc}") from exc
        return page

    # --- internals --------------------------------------------------------------------------------------
    def _write_story_files(self, folder: Path, draft: StoryDraft) -> None:
        write_text_atomic(folder / STORY_JSON, codec.record_to_json(codec.draft_to_record(draft)))
        image_link = None
        if draft.image is not None:
            write_bytes_atomic(folder / IMAGE_PNG, codec.png_bytes(draft))
            image_link = IMAGE_PNG
        write_text_atomic(folder / STORY_MD, codec.markdown_page(draft, image_link))

    def _swap_in(self, staging: Path, final: Path) -> None:
        """Move a finished story folder into place; an older version goes to the trash first."""
        trash = self.root / f"{_TRASH_PREFIX}{final.name}"
        if final.exists():
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(final, trash)
        os.replace(staging, final)
        fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    def _recover(self) -> None:
        """Finish or undo what a crash interrupted: drop half-built folders, restore a replaced story."""
        for entry in self.root.iterdir():
            if entry.name.startswith(_TMP_PREFIX):
                log.warning("library: removing unfinished write %s", entry.name)
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
            elif entry.name.startswith(_TRASH_PREFIX):
                final = self.root / entry.name[len(_TRASH_PREFIX) :]
                if final.exists() or not _ID_RE.match(final.name):
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    log.warning("library: restoring %s after an interrupted replace", final.name)
                    os.replace(entry, final)

    def _check_index(self) -> None:
        """Rebuild the index when it is missing, unreadable, or does not list exactly the story folders."""
        folders = {p.name for p in self.root.iterdir() if p.is_dir() and _ID_RE.match(p.name)}
        try:
            with self._connect() as db:
                indexed = {row[0] for row in db.execute("SELECT id FROM stories")}
        except sqlite3.DatabaseError as exc:
            if self.index_path.exists():
                log.warning("library: index %s is damaged (%s); rebuilding it", self.index_path, exc)
            self.rebuild_index()
            return
        if indexed != folders:
            log.warning("library: index out of step with the story folders; rebuilding it")
            self.rebuild_index()

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if not self.index_path.exists():
            raise sqlite3.DatabaseError("index file is missing")
        with contextlib.closing(sqlite3.connect(self.index_path)) as db, db:
            yield db

    def _index_query(self, sql: str, args: tuple[str, ...]) -> builtins.list[tuple]:
        # No lock: SQLite serialises readers and the writer, so a list never waits for a story being saved.
        try:
            with self._connect() as db:
                return db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            log.warning("library: index query failed (%s); rebuilding the index", exc)
        with self._lock:
            self.rebuild_index()
            with self._connect() as db:
                return db.execute(sql, args).fetchall()

    def _index_execute(self, sql: str, args: tuple) -> None:
        with self._lock:
            try:
                with self._connect() as db:
                    db.execute(sql, args)
            except sqlite3.DatabaseError as exc:
                log.warning("library: index update failed (%s); rebuilding the index", exc)
                self.rebuild_index()

    def _index_upsert(self, draft: StoryDraft) -> None:
        row = _index_row(draft, draft.image is not None)
        self._index_execute("INSERT OR REPLACE INTO stories VALUES (?, ?, ?, ?, ?, ?)", row)

    def _folder_exists(self, story_id: str) -> bool:
        return bool(_ID_RE.match(story_id)) and (self.root / story_id / STORY_JSON).is_file()

    def _folder(self, story_id: str) -> Path:
        if not self._folder_exists(story_id):
            raise LibraryError(f"story '{story_id}' is not in the library")
        return self.root / story_id


def _new_id() -> str:
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


def _index_row(draft: StoryDraft, has_image: bool) -> tuple:
    return (draft.story_id, draft.title, draft.idea, draft.created or "", int(has_image), int(draft.demo))


def _load_image(path: Path) -> PILImage | None:
    if not path.exists():
        return None
    with Image.open(path) as img:
        img.load()
        return img.copy()
