"""
Test the naming rules of spec R2 and the template_id validation of R1.
"""

from __future__ import annotations

import random
import re
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statemachine import ids, naming, toolcalls

GENERATED = re.compile(r"^(?P<base>[a-z0-9]+(?:-[a-z0-9]+)*)-(?P<hex>[0-9a-f]{4})$")
RANDOM_NAME = re.compile(r"^[a-z]+-[a-z]+$")
RANDOM_NAME_WITH_DIGIT = re.compile(r"^[a-z]+-[a-z]+[0-8]$")
FAST = settings(max_examples=200, deadline=None)


def _rng() -> random.Random:
    return random.Random(0)


def _base(name: str) -> str:
    match = GENERATED.fullmatch(name)
    assert match is not None, f"{name!r} is not <base>-<4 hex>"
    return match["base"]


# name_valid ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["a", "A", "7", "dev", "Dev-Box-2", "a-b-c", "x" * 32, "new-1", "create2", "New"],
)
def test_a_name_that_follows_coder_rules_is_valid(name: str) -> None:
    assert naming.name_valid(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 33,
        "new",
        "create",
        "-dev",
        "dev-",
        "de--v",
        "de_v",
        "de v",
        "dév",
        "dev.box",
        "dev\n",
    ],
)
def test_a_name_that_breaks_coder_rules_is_invalid(name: str) -> None:
    assert not naming.name_valid(name)


# choose -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [("dev", "dev"), ("  My-Box  ", "My-Box"), ("x" * 32, "x" * 32), ("\tdev-2\n", "dev-2")],
)
def test_a_valid_given_name_is_kept_as_is_after_trimming(given: str, expected: str) -> None:
    assert naming.choose(given, "template", _rng()) == expected


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ("My Workspace", "myworkspace"),
        ("new", None),
        ("x" * 33, None),
        ("Dev_Box", "devbox"),
        ("alice@example.com", "alice"),
    ],
)
def test_an_invalid_given_name_becomes_the_seed_of_a_generated_name(
    given: str, base: str | None
) -> None:
    name = naming.choose(given, "template", _rng())
    assert naming.name_valid(name)
    if base is not None:
        assert _base(name) == base
    else:
        # Still invalid after cleaning: a random <adjective>-<surname> base.
        assert RANDOM_NAME.fullmatch(_base(name))
    assert "template" not in name


@pytest.mark.parametrize("given", [None, "", "   "])
def test_without_a_name_the_template_name_is_the_seed(given: str | None) -> None:
    assert _base(naming.choose(given, "Go-Template", _rng())) == "go-template"


@pytest.mark.parametrize("template_name", [None, ""])
def test_without_name_or_template_name_the_seed_is_workspace(template_name: str | None) -> None:
    assert _base(naming.choose(None, template_name, _rng())) == "workspace"


@pytest.mark.parametrize(
    ("seed", "base"),
    [
        ("Alice.Smith@Example.com", "alicesmith"),
        ("a@b@example.com", "ab"),
        ("bob+test@example.com", "bobtest"),
        ("UPPER", "upper"),
        ("  padded  ", "padded"),
        ("my template!", "mytemplate"),
        ("c++ dev-box", "cdev-box"),
    ],
)
def test_a_generated_name_lowercases_and_cleans_its_seed(seed: str, base: str) -> None:
    assert _base(naming.generated_name(seed, _rng())) == base


def test_a_generated_name_cuts_its_base_to_27_characters() -> None:
    seed = "abcdefghij" * 3  # 30 characters, valid
    name = naming.generated_name(seed, _rng())
    assert _base(name) == seed[:27]
    assert len(name) == 32


def test_a_generated_name_trims_dashes_left_by_the_cut() -> None:
    seed = "a" * 26 + "-" + "b" * 5  # 32 characters; the cut ends on the dash
    assert _base(naming.generated_name(seed, _rng())) == "a" * 26


@pytest.mark.parametrize("seed", ["---", "@@@", "!!!", "a--b", "-a", "a" * 33, "new", "é"])
def test_a_seed_that_stays_invalid_gives_a_random_adjective_surname_base(seed: str) -> None:
    name = naming.generated_name(seed, _rng())
    assert naming.name_valid(name)
    assert RANDOM_NAME.fullmatch(_base(name))


def test_a_generated_name_ends_with_four_lowercase_hex_digits() -> None:
    suffixes = {naming.generated_name("dev", random.Random(n))[-4:] for n in range(200)}
    assert all(re.fullmatch(r"[0-9a-f]{4}", s) for s in suffixes)
    assert len(suffixes) > 150  # random, not a constant


def test_the_same_random_generator_gives_the_same_name() -> None:
    assert naming.choose(None, "t", random.Random(42)) == naming.choose(
        None, "t", random.Random(42)
    )


@given(st.integers(min_value=0, max_value=2**32))
@FAST
def test_random_fallback_names_are_always_valid(seed: int) -> None:
    plain = naming.random_name(random.Random(seed))
    with_digit = naming.random_name_with_digit(random.Random(seed))
    assert RANDOM_NAME.fullmatch(plain)
    assert RANDOM_NAME_WITH_DIGIT.fullmatch(with_digit)
    assert naming.name_valid(plain)
    assert naming.name_valid(with_digit)


def test_every_pair_of_words_makes_a_valid_random_name() -> None:
    adjectives = naming._words("adjectives")
    surnames = naming._words("surnames")
    assert adjectives
    assert surnames
    assert all(re.fullmatch(r"[a-z]+", w) for w in adjectives + surnames)
    longest = max(map(len, adjectives)) + 1 + max(map(len, surnames)) + 1
    assert longest <= naming.NAME_MAX_CHARS


@given(
    given_name=st.none() | st.text(max_size=60),
    template_name=st.none() | st.text(max_size=60),
    seed=st.integers(min_value=0, max_value=2**16),
)
@FAST
def test_choose_always_returns_a_valid_name(
    given_name: str | None, template_name: str | None, seed: int
) -> None:
    name = naming.choose(given_name, template_name, random.Random(seed))
    assert naming.name_valid(name)
    stripped = (given_name or "").strip()
    if naming.name_valid(stripped):
        assert name == stripped
    else:
        assert GENERATED.fullmatch(name) or RANDOM_NAME_WITH_DIGIT.fullmatch(name)


@given(st.text(alphabet="abcXYZ019-_@. ", max_size=40), st.integers(0, 2**16))
@FAST
def test_generated_names_are_valid_and_have_the_generated_shape(seed: str, n: int) -> None:
    name = naming.generated_name(seed, random.Random(n))
    assert naming.name_valid(name)
    assert GENERATED.fullmatch(name)
    assert len(_base(name)) <= naming.GENERATED_BASE_MAX_CHARS


# template_id ---------------------------------------------------------------------

CANONICAL = "0f8fad5b-d9cb-469f-a165-70867728950e"


@pytest.mark.parametrize("raw", [None, "", "   ", "\t\n"])
def test_a_blank_template_id_is_required(raw: str | None) -> None:
    with pytest.raises(toolcalls.InvalidArgumentError) as info:
        toolcalls.template_id(raw)
    assert str(info.value) == "template_id is required; use list_templates to find one"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("abc", "invalid UUID length: 3"),
        ("  abc  ", "invalid UUID length: 3"),
        (CANONICAL + "0", "invalid UUID length: 37"),
        (CANONICAL[:-1], "invalid UUID length: 35"),
        ("0f8fad5b_d9cb_469f_a165_70867728950e", "invalid UUID format"),
        ("0f8fad5b-d9cb-469f-a165-70867728950g", "invalid UUID format"),
        ("zf8fad5bd9cb469fa16570867728950e", "invalid UUID format"),
        ("0f8fad5bd-9cb-469f-a165-70867728950e", "invalid UUID format"),
        ("uuid:urn:" + CANONICAL, 'invalid urn prefix: "uuid:urn:"'),
    ],
)
def test_a_template_id_that_is_not_a_uuid_says_why(raw: str, reason: str) -> None:
    with pytest.raises(toolcalls.InvalidArgumentError) as info:
        toolcalls.template_id(raw)
    assert str(info.value) == f"invalid template_id: {reason}"


@pytest.mark.parametrize(
    "raw",
    [
        CANONICAL,
        CANONICAL.upper(),
        f"  {CANONICAL}  ",
        "{" + CANONICAL + "}",
        "urn:uuid:" + CANONICAL,
        "URN:UUID:" + CANONICAL.upper(),
        CANONICAL.replace("-", ""),
    ],
)
def test_a_valid_template_id_is_canonicalised(raw: str) -> None:
    assert toolcalls.template_id(raw) == CANONICAL


@given(st.uuids())
@FAST
def test_any_uuid_in_any_case_is_accepted_in_canonical_form(value: uuid.UUID) -> None:
    assert toolcalls.template_id(str(value).upper()) == str(value)
    assert toolcalls.template_id(value.hex) == str(value)


@given(st.text(max_size=50))
@FAST
def test_template_id_either_canonicalises_or_raises_a_spec_message(raw: str) -> None:
    try:
        result = toolcalls.template_id(raw)
    except toolcalls.InvalidArgumentError as exc:
        message = str(exc)
        assert message == "template_id is required; use list_templates to find one" or (
            message.startswith("invalid template_id: ")
        )
    else:
        assert str(uuid.UUID(result)) == result


def test_a_template_id_of_36_bytes_but_fewer_characters_is_a_format_error_not_a_crash() -> None:
    text = "a" * 8 + "-" + "😀" * 4 + "-" + "😀" * 2 + "é"
    assert len(text.encode()) == 36
    with pytest.raises(
        toolcalls.InvalidArgumentError, match=r"^invalid template_id: invalid UUID format$"
    ):
        toolcalls.template_id(text)


@given(st.lists(st.one_of(st.text(), st.integers()), min_size=1, max_size=4))
def test_derived_ids_are_exactly_uuid5_of_the_joined_parts(parts: list[object]) -> None:
    expected = str(uuid.uuid5(ids.NAMESPACE, "/".join(map(str, parts))))
    assert ids.derive(*parts) == expected
