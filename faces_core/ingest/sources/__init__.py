"""Dataset sources. Each parser returns records plus rejected items (a ParseResult)."""

from typing import Final

MAX_LINE_BYTES: Final = 1024 * 1024
"""Default longest annotation line a parser reads (``ingest.max_line_bytes``). The longest
real TCS line is under 5 kB and IMFDB rows are a few hundred bytes; a longer line is
``malformed_line`` without being parsed, so one huge line costs neither memory nor time."""

MAX_TCS_BYTES: Final = 1024**3
"""Default ``ingest.max_tcs_bytes``: largest TCS file read, local or fetched (the real export is
3.5 MB; a 1 GiB file holds about 250,000 image lines). An endless URL is cut there instead of
filling memory."""

MAX_TXT_BYTES: Final = 256 * 1024**2
"""Default ``ingest.max_annotation_bytes``: largest IMFDB annotation txt read (real ones are a
few kB): a 2 GiB sparse file is refused at once."""
