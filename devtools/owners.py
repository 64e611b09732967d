"""
Name stand-in Coder users after their ids, so several owners show up as several users.
"""

from __future__ import annotations

import hashlib

_FIRST_NAMES = (
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
    "ivan", "judy", "mallory", "niaj", "olivia", "peggy", "rupert", "sybil",
    "trent", "victor", "walter", "wendy", "yara", "zoe", "amir", "bea",
    "chen", "dara", "emeka", "fatima", "goran", "hana", "ines", "jonas",
)  # fmt: skip


def owner_name(owner_id: str) -> str:
    """
    Return a stable, valid Coder username for ``owner_id``, e.g. ``alice-5f0c``.

    The same id always gives the same name; the id's first four hex digits
    keep two owners that draw the same first name apart.
    """
    digest = hashlib.sha256(owner_id.lower().encode()).digest()
    first = _FIRST_NAMES[digest[0] % len(_FIRST_NAMES)]
    return f"{first}-{owner_id.replace('-', '').lower()[:4]}"
