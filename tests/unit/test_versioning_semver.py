"""Semantic versions of the weights: parsing, bumps, the genesis rule."""

import pytest

from p2pmodel.versioning.semver import GENESIS, Version, next_version


def test_parse_and_str():
    assert Version.parse("v0.1.0") == Version(0, 1, 0) == Version.parse("0.1.0")
    assert Version.parse("v12.0.345") == Version(12, 0, 345)
    assert str(Version(1, 2, 3)) == "v1.2.3"
    assert Version.parse(str(Version(7, 8, 9))) == Version(7, 8, 9)
    assert Version.parse(Version(1, 0, 0)) == Version(1, 0, 0)


@pytest.mark.parametrize(
    "bad",
    ["", "v", "1.2", "v1.2.3.4", "V1.2.3", "v01.2.3", "v1.02.3", "v-1.2.3", "v1.2.3-rc1", " v1.2.3", "v1.2.3\n",
     "v1..3", "vv1.2.3", "v１.2.3", "v99999999999.0.0", None, 1, b"v1.2.3"],
)  # fmt: skip
def test_parse_rejects_with_one_line(bad):
    with pytest.raises(ValueError) as e:
        Version.parse(bad)
    assert "\n" not in str(e.value) and "version" in str(e.value)


def test_constructor_validates():
    for bad in [(-1, 0, 0), (0, 1.5, 0), (True, 0, 0), (0, 0, 10**10)]:
        with pytest.raises(ValueError):
            Version(*bad)


def test_order():
    assert Version(0, 1, 9) < Version(0, 1, 10) < Version(0, 2, 0) < Version(1, 0, 0)
    assert sorted(map(Version.parse, ["v1.0.0", "v0.10.0", "v0.9.1", "v0.9.0"])) == [
        Version(0, 9, 0), Version(0, 9, 1), Version(0, 10, 0), Version(1, 0, 0),
    ]  # fmt: skip


def test_bump_resets_lower_components():
    v = Version(1, 4, 7)
    assert v.bump("patch") == Version(1, 4, 8)
    assert v.bump("minor") == Version(1, 5, 0)
    assert v.bump("major") == Version(2, 0, 0)
    with pytest.raises(ValueError):
        v.bump("huge")


def test_next_version():
    assert GENESIS == Version(0, 1, 0)
    for bump in ("patch", "minor", "major"):
        assert next_version(None, bump) == GENESIS
    assert next_version(GENESIS, "patch") == Version(0, 1, 1)
    assert next_version(GENESIS, "minor") == Version(0, 2, 0)
    assert next_version(GENESIS, "major") == Version(1, 0, 0)
    with pytest.raises(ValueError):
        next_version(None, "nope")
    with pytest.raises(ValueError):
        next_version(GENESIS, "")
