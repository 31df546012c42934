"""A path parameter that takes any text: customer ids are the senders' own, slashes and newlines included.

Starlette's default parameter stops at a slash and its ``path`` convertor stops at a newline, so a
customer whose id holds either could not be looked up or erased.
"""

from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor


class AnyText(Convertor[str]):
    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


ANY_TEXT = "any_text"
register_url_convertor(ANY_TEXT, AnyText())
