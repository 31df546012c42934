"""The address a customer's email trait holds: one address, its display name kept, never a header's end."""

from __future__ import annotations

import pytest

from campaigns.channels import RecipientRefused
from campaigns.channels.email import recipient


@pytest.mark.parametrize(
    ("trait", "address", "display_name"),
    [
        ("ada@example.org", "ada@example.org", ""),
        ("Ada Lovelace <ada@example.org>", "ada@example.org", "Ada Lovelace"),
        (
            '"Ada <script>alert(1)</script> \u202etxet\u202c" <ada@example.org>',
            "ada@example.org",
            "Ada <script>alert(1)</script> \u202etxet\u202c",
        ),
        ('"\'; DROP TABLE x; --" <ada@example.org>', "ada@example.org", "'; DROP TABLE x; --"),
    ],
)
def test_one_address_is_taken_with_its_display_name(trait: str, address: str, display_name: str) -> None:
    taken = recipient(trait)
    assert (taken.addr_spec, taken.display_name) == (address, display_name)


@pytest.mark.parametrize(
    "trait",
    [
        "ada@example.org\r\nBcc: eve@example.org",
        "ada@example.org\nBcc: eve@example.org",
        "ada@example.org\u2028Bcc: eve@example.org",  # str.splitlines would end the header here
        "ada@example.org\x0b",
        "ada@example.org\x1b[31m",
        "Ada\x85 <ada@example.org>",
        "ada@example.org, eve@example.org",  # shown in To: without being sent to
        "ada@example.org; eve@example.org",
        "Ada <script> <ada@example.org>",
        "no address",
        "",
        "ü@example.org",  # a non-ASCII local part: the header would mangle it
    ],
)
def test_anything_else_is_refused_as_not_valid(trait: str) -> None:
    with pytest.raises(RecipientRefused, match=r"^the recipient address is not valid$"):
        recipient(trait)
