"""A path parameter that takes any text: customer ids are the senders' own, slashes and newlines included.

Starlette's default parameter stops at a slash and its ``path`` convertor stops at a newline, so a
customer whose id holds either could not be looked up or erased. Neither takes a NUL (``%00``): no
stored text holds one (ingest refuses it, PostgreSQL cannot keep it), and sent on to the database it
was a 500; such a path matches no route, a 404.
"""

from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor


class AnyText(Convertor[str]):
    regex = r"[^\x00]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class OneSegment(AnyText):
    """Starlette's default (up to the next slash), but no NUL: for ids that never hold a slash."""

    regex = r"[^/\x00]+"


ANY_TEXT = "any_text"
ONE_SEGMENT = "one_segment"
register_url_convertor(ANY_TEXT, AnyText())
register_url_convertor(ONE_SEGMENT, OneSegment())
