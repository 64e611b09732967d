"""
Choose workspace names the way Coder's chat tool does (spec R2).

``name_valid`` is ``codersdk.NameValid``; ``generated_name`` is chatd's
``generatedWorkspaceName`` with ``codersdk.UsernameFrom`` folded in; the
random fallbacks draw from the same gofakeit word lists Coder's
``namesgenerator`` uses (``statemachine/words``).
"""

from __future__ import annotations

import random
import re
from functools import cache
from importlib import resources

NAME_MAX_CHARS = 32
GENERATED_BASE_MAX_CHARS = 27
RESERVED_NAMES = frozenset({"new", "create"})
DEFAULT_SEED = "workspace"

_NAME_RE = re.compile(r"^[a-zA-Z0-9]+(?:-[a-zA-Z0-9]+)*$")
_NOT_USERNAME_RE = re.compile(r"[^a-zA-Z0-9-]")


def name_valid(name: str) -> bool:
    """
    Tell whether ``name`` passes Coder's NameValid.
    """
    if not 1 <= len(name) <= NAME_MAX_CHARS or name in RESERVED_NAMES:
        return False
    return _NAME_RE.fullmatch(name) is not None


@cache
def _words(kind: str) -> tuple[str, ...]:
    text = resources.files("statemachine").joinpath("words", f"{kind}.txt").read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def random_name(rng: random.Random) -> str:
    """
    Return ``<adjective>-<surname>``, as UsernameFrom's last resort does.
    """
    return f"{rng.choice(_words('adjectives'))}-{rng.choice(_words('surnames'))}"


def random_name_with_digit(rng: random.Random) -> str:
    """
    Return ``<adjective>-<surname><digit>`` (namesgenerator.NameDigitWith("-")).
    """
    # Coder's code draws rand.IntN(9): digits 0 to 8.
    return f"{random_name(rng)}{rng.randrange(9)}"


def _username_from(text: str, rng: random.Random) -> str:
    if name_valid(text):
        return text
    at = text.rfind("@")
    if at >= 0:
        text = text[:at]
    text = _NOT_USERNAME_RE.sub("", text)
    if name_valid(text):
        return text
    return random_name(rng)


def generated_name(seed: str, rng: random.Random) -> str:
    """
    Return ``<base>-<4 hex>`` made from ``seed``, or a random valid name.
    """
    base = _username_from(seed.strip().lower(), rng)
    if not base.strip():
        base = DEFAULT_SEED
    if len(base) > GENERATED_BASE_MAX_CHARS:
        base = base[:GENERATED_BASE_MAX_CHARS].strip("-")
    if not base:
        base = DEFAULT_SEED
    name = f"{base}-{rng.getrandbits(16):04x}"
    if name_valid(name):
        return name
    return random_name_with_digit(rng)


def choose(given: str | None, template_name: str | None, rng: random.Random) -> str:
    """
    Return the name to create: a valid given name as is, else a generated one.
    """
    name = (given or "").strip()
    if name:
        return name if name_valid(name) else generated_name(name, rng)
    return generated_name(template_name or DEFAULT_SEED, rng)
