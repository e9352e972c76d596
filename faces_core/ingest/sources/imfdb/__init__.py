"""IMFDB source: walk ``<root>/<Actor>/<Movie>/`` folders and turn every txt row into a
:class:`FaceRecord` or a :class:`Rejection`.

The published annotation files are hand-made and inconsistent (see the package README):
BOMs, CRLF, NULs, 16/17/18-field rows, space-separated geometry-only files, shifted and
merged columns, ``null`` rows, rows split across lines, typos, duplicated crops with
conflicting labels. Rather than trusting column positions, each row is read by *content*:

* the crop is the first cell that names an existing file in ``images/`` (else the first
  cell that looks like a crop file name: image extension, no whitespace, a letter in the
  stem), so joined or shifted leading columns do not matter;
* the frame geometry is the four integers right after the crop (cells are split on
  whitespace, so ``555  153  172  \\t174`` still gives four numbers), or four integers
  that open the row (rows whose geometry was moved to the front);
* the label tokens are placed by vocabulary, which works because the seven IMFDB
  vocabularies are disjoint (:data:`faces_core.taxonomy.IMFDB_LABELS`).

Decisions for ambiguous cases (each one produces exactly one outcome per non-blank line):

* a line without a crop name and with fewer than 7 cells (the tail of a row split across
  two lines, ``\\tFRONTAL\\tPARTIAL``) is ``malformed_line``; it is *not* joined to the
  line before, whose missing labels stay None. Joining would need a guess about which
  row it belongs to and would break the one-line-one-outcome accounting;
* a row of 7 or more cells without a crop name (``null`` rows) is ``missing_field``;
* a crop that is not on disk is ``missing_crop`` for every row naming it, even when the
  row repeats an earlier one, because such a row can never become a record;
* the first row naming an existing crop becomes the record; every later row naming the
  same crop is ``duplicate_row`` (exact copy, or merged: its labels are pooled with the
  record's and an attribute seen with two values becomes None + ``conflicting_labels``);
* label problems (``unknown_label``, ``conflicting_labels``) and ``bad_geometry`` are
  reported only for rows whose content reaches a record, so a rejected row is reported
  once, under its row-level reason (:data:`ROW_REASONS`). They annotate a kept face, so
  their item names the part at fault (``file.txt:N#SMILING``, ``#pose``, ``#frame_box``)
  and never equals a record's item: a face is never both kept and rejected.

Nothing outside the root is read (see the README's rules for bad data):

* a crop name is a file name in ``images/``: a row naming an absolute path or a path with
  a ``..`` part is ``path_outside_root`` and nothing is looked up;
* a symlink (actor or movie folder, txt file, ``images/``, crop) whose target resolves
  outside the root is not followed: a crop link is ``symlink_outside_root`` for every row
  naming it (or once, with the crop's path as item, when no row does), any other link once
  with its path as item. Links that stay inside the root are followed, and a record's
  ``image_ref`` is the link's own path, so it stays relative to the root.

One job per module: :mod:`~faces_core.ingest.sources.imfdb.rows` reads a txt file's lines and
rows, :mod:`~faces_core.ingest.sources.imfdb.tree` lists folders under the rules above,
:mod:`~faces_core.ingest.sources.imfdb.movie` merges one movie's rows into records, and
:mod:`~faces_core.ingest.sources.imfdb.scan` walks the whole tree.
"""

from faces_core.ingest.sources import MAX_LINE_BYTES, MAX_TXT_BYTES
from faces_core.ingest.sources.imfdb.movie import parse_imfdb_file
from faces_core.ingest.sources.imfdb.rows import (
    IMAGE_SUFFIXES,
    MIN_ROW_CELLS,
    ROW_REASONS,
    SOURCE,
    STAGE,
    iter_imfdb_lines,
    read_imfdb_lines,
)
from faces_core.ingest.sources.imfdb.scan import scan_imfdb
from faces_core.ingest.sources.imfdb.tree import IMAGES_DIR, escapes_root, leaves_folder

__all__ = [
    "IMAGES_DIR",
    "IMAGE_SUFFIXES",
    "MAX_LINE_BYTES",
    "MAX_TXT_BYTES",
    "MIN_ROW_CELLS",
    "ROW_REASONS",
    "SOURCE",
    "STAGE",
    "escapes_root",
    "iter_imfdb_lines",
    "leaves_folder",
    "parse_imfdb_file",
    "read_imfdb_lines",
    "scan_imfdb",
]
