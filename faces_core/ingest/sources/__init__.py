"""Dataset sources. Each parser returns records plus rejected items (a ParseResult)."""

from typing import Final

MAX_LINE_BYTES: Final = 1024 * 1024
"""Default longest annotation line a parser reads (``ingest.max_line_bytes``). The longest
real TCS line is under 5 kB and IMFDB rows are a few hundred bytes; a longer line is
``malformed_line`` without being parsed, so one huge line costs neither memory nor time."""
