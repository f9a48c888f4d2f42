"""Baseline-import CSV bodies shared by the server tests and the parser's unit tests."""

from __future__ import annotations

# Lines 1 to 11 of a malformed `page,views` body: the line numbers in the comments are
# the ones a report names for the rejected rows.
MALFORMED_HEAD = (
    b"\xef\xbb\xbfPage,Views\r\n"  # a BOM and another case: still the header
    b"/a,10\r\n"
    b"/b,abc\r\n"  # 3
    b"/c,-5\r\n"  # 4
    b"/d,1,2\r\n"  # 5
    b",7\r\n"  # 6
    b"/e\x07,8\r\n"  # 7
    b'"/f,9\r\n'  # 8: an unclosed quote
    b"/g\xff,4\r\n"  # 9: not UTF-8
    b"\r\n"  # 10: blank, skipped
    b'"/h, with comma",11\r\n'
)

# (line, field) of each row of MALFORMED_HEAD a report rejects, in order.
MALFORMED_HEAD_REJECTED = [
    (3, "views"),
    (4, "views"),
    (5, "line"),
    (6, "page"),
    (7, "page"),
    (8, "line"),
    (9, "line"),
]

# The end of that body, right after MALFORMED_HEAD (or after a line put between them):
# a too-large count, a too-long line, and a last row without a final newline.
MALFORMED_TAIL = (
    b"/i,99999999999999999999\r\n"  # views
    b"/j," + b"x" * 9000 + b"\r\n"  # line: too long
    b"/k,3"  # no final newline
)
