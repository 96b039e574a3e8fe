"""Tests for steel_defect.rle: round trips, a loop-based oracle, strict validation and the real Kaggle strings."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from steel_defect import DEFAULT_SHAPE
from steel_defect.rle import masks_to_rles, rle_area, rle_decode, rle_encode, rles_to_masks

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SAMPLES = SHARED / "data" / "severstal-samples"
REFERENCE = SHARED / "reference"


# --------------------------------------------------------------------------- oracle (loops allowed here only)
def naive_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    height, width = shape
    flat = [0] * (height * width)  # column-major pixel order
    tokens = [int(t) for t in rle.split()]
    for start, length in zip(tokens[0::2], tokens[1::2], strict=True):
        for p in range(start - 1, start - 1 + length):
            flat[p] = 1
    mask = np.zeros(shape, dtype=np.uint8)
    for p, v in enumerate(flat):
        mask[p % height, p // height] = v
    return mask


def naive_encode(mask: np.ndarray) -> str:
    height, width = mask.shape
    out: list[int] = []
    run_start = None
    for p in range(height * width + 1):
        on = p < height * width and bool(mask[p % height, p // height])
        if on and run_start is None:
            run_start = p
        elif not on and run_start is not None:
            out += [run_start + 1, p - run_start]
            run_start = None
    return " ".join(map(str, out))


# --------------------------------------------------------------------------- strategies
shapes = st.one_of(
    st.tuples(st.just(1), st.integers(1, 12)),  # 1 x W
    st.tuples(st.integers(1, 12), st.just(1)),  # H x 1
    st.tuples(st.integers(1, 9), st.integers(1, 9)),
)


@st.composite
def masks(draw) -> np.ndarray:
    shape = draw(shapes)
    dtype = draw(st.sampled_from([np.uint8, np.bool_, np.int64]))
    elements = st.booleans() if dtype is np.bool_ else st.integers(0, 1)
    return draw(hnp.arrays(dtype, shape, elements=elements))


@st.composite
def canonical_rles(draw) -> tuple[str, tuple[int, int]]:
    """Sorted, disjoint, non-touching runs: boundaries are distinct points of [0, H*W]."""
    shape = draw(shapes)
    n = shape[0] * shape[1]
    bounds = sorted(draw(st.sets(st.integers(0, n), max_size=n + 1)))
    bounds = bounds[: len(bounds) // 2 * 2]
    tokens = [x for a, b in zip(bounds[0::2], bounds[1::2], strict=True) for x in (a + 1, b - a)]
    return " ".join(map(str, tokens)), shape


@st.composite
def touching_rles(draw) -> tuple[str, tuple[int, int]]:
    """Valid runs that may touch (start == previous end): cut points strictly increasing, lengths >= 1."""
    shape = draw(shapes)
    n = shape[0] * shape[1]
    cuts = sorted(draw(st.sets(st.integers(0, n), min_size=2, max_size=n + 1)))
    keep = draw(st.lists(st.booleans(), min_size=len(cuts) - 1, max_size=len(cuts) - 1))
    tokens = [x for a, b, k in zip(cuts[:-1], cuts[1:], keep, strict=True) if k for x in (a + 1, b - a)]
    return " ".join(map(str, tokens)), shape


# --------------------------------------------------------------------------- properties
@settings(max_examples=300, deadline=None)
@given(masks())
def test_encode_decode_round_trip_and_oracle(mask: np.ndarray) -> None:
    rle = rle_encode(mask)
    assert rle == naive_encode(mask)
    decoded = rle_decode(rle, mask.shape)
    assert decoded.dtype == np.uint8 and decoded.shape == mask.shape and decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded, mask.astype(np.uint8))
    assert rle_area(rle, mask.shape) == int(mask.sum())


@settings(max_examples=300, deadline=None)
@given(canonical_rles())
def test_decode_encode_of_canonical_strings_is_identity(case: tuple[str, tuple[int, int]]) -> None:
    rle, shape = case
    mask = rle_decode(rle, shape)
    np.testing.assert_array_equal(mask, naive_decode(rle, shape))
    assert rle_encode(mask) == rle
    assert rle_area(rle, shape) == int(mask.sum())


@settings(max_examples=200, deadline=None)
@given(touching_rles())
def test_touching_runs_decode_and_encode_merged(case: tuple[str, tuple[int, int]]) -> None:
    rle, shape = case
    mask = rle_decode(rle, shape)
    np.testing.assert_array_equal(mask, naive_decode(rle, shape))
    assert rle_encode(mask) == naive_encode(mask)  # canonical: touching runs merged
    assert rle_area(rle, shape) == sum(int(t) for t in rle.split()[1::2])


def test_touching_runs_are_merged_on_encode() -> None:
    mask = rle_decode("1 2 3 4 10 1", (4, 4))
    assert rle_encode(mask) == "1 6 10 1"


def test_column_major_order_and_wrapping_runs() -> None:
    mask = rle_decode("2 1", (3, 4))
    assert mask[1, 0] == 1 and mask.sum() == 1
    mask = rle_decode("3 5", (3, 4))  # (2,0) then all of column 1, then (0,2)
    expected = np.zeros((3, 4), np.uint8)
    expected[2, 0] = 1
    expected[:, 1] = 1
    expected[0, 2] = 1
    np.testing.assert_array_equal(mask, expected)
    assert rle_encode(expected) == "3 5"
    full = np.ones((3, 4), bool)
    assert rle_encode(full) == "1 12"
    np.testing.assert_array_equal(rle_decode("1 12", (3, 4)), full)


@pytest.mark.parametrize("empty", [None, float("nan"), np.nan, np.float32("nan"), pd.NA, "", "   ", "\n\t"])
def test_missing_values_decode_to_empty(empty) -> None:
    mask = rle_decode(empty, (5, 7))
    assert mask.shape == (5, 7) and mask.dtype == np.uint8 and not mask.any()
    assert rle_area(empty, (5, 7)) == 0


def test_default_shape_and_empty_encode() -> None:
    assert rle_decode(None).shape == DEFAULT_SHAPE
    assert rle_encode(np.zeros(DEFAULT_SHAPE, np.uint8)) == ""
    assert rle_encode(np.zeros((0, 3), bool)) == ""


def test_whitespace_variants_parse() -> None:
    np.testing.assert_array_equal(rle_decode(" 1  2\t4\n1 ", (3, 2)), rle_decode("1 2 4 1", (3, 2)))


# --------------------------------------------------------------------------- malformed input
@pytest.mark.parametrize(
    ("rle", "quoted", "why"),
    [
        ("1 2 3", "'3'", "odd number of tokens"),
        ("1", "'1'", "odd number of tokens"),
        ("1 2 -3 4", "'-3'", "not a positive integer"),
        ("1 2 5 -1", "'-1'", "not a positive integer"),
        ("1.5 2", "'1.5'", "not a positive integer"),
        ("1 2 abc 4", "'abc'", "not a positive integer"),
        ("+3 1", "'+3'", "not a positive integer"),
        ("1 2 4 1e3", "'1e3'", "not a positive integer"),
        ("1 2 ٣ 1", "'٣'", "not a positive integer"),  # a non-ASCII digit
        ("0 2", "'0'", "not a positive integer"),
        ("3 1 0 2", "'0'", "not a positive integer"),
        ("1 2 5 0", "'5 0'", "zero length"),
        ("5 1 3 1", "'3 1'", "not strictly increasing"),
        ("5 1 5 1", "'5 1'", "not strictly increasing"),
        ("1 5 3 1", "'3 1'", "overlaps"),
        ("1 5 3 1", "'1 5'", "overlaps"),
        ("10 4", "'10 4'", "past the last pixel"),
        ("1 1 3 2 7 1 12 2", "'12 2'", "past the last pixel"),
        ("13 1", "'13 1'", "past the last pixel"),
        ("1 2 99999999999999999999999 1", "'99999999999999999999999'", "too large"),
        ("1 2 4 1000000000000000000", "'1000000000000000000'", "too large"),
        ("1  2 4\t99999999999999999999999", "'99999999999999999999999'", "too large"),
        ("1  2\t3", "'3'", "odd number of tokens"),
    ],
)
def test_malformed_strings_raise_and_quote_the_culprit(rle: str, quoted: str, why: str) -> None:
    shape = (3, 4)
    for func in (rle_decode, rle_area):
        with pytest.raises(ValueError) as info:
            func(rle, shape)
        message = str(info.value)
        assert quoted in message and why in message, message


def test_runs_up_to_the_last_pixel_are_legal() -> None:
    assert rle_area("10 3", (3, 4)) == 3
    assert rle_decode("12 1", (3, 4))[2, 3] == 1


def test_bad_types_and_shapes() -> None:
    with pytest.raises(ValueError, match="3.0"):
        rle_decode(3.0, (2, 2))
    with pytest.raises(TypeError, match="bytes"):
        rle_decode(b"1 2", (2, 2))  # type: ignore[arg-type]
    for shape in [(0, 4), (2,), (2, 2, 2), (2.5, 3)]:
        with pytest.raises(ValueError, match="shape"):
            rle_decode("1 1", shape)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mask", "match"),
    [
        (np.array([[0, 2], [1, 0]], np.uint8), "found the value 2"),
        (np.array([[0, 255]], np.uint8), "found the value 255"),
        (np.array([[0, -1]], np.int16), "found the value -1"),
        (np.array([[0.0, 1.0]]), "dtype float64"),
        (np.zeros((2, 2, 2), np.uint8), "2-D"),
    ],
)
def test_encode_rejects_non_binary_masks(mask: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        rle_encode(mask)


def test_stack_helpers_round_trip_and_name_the_channel() -> None:
    rng = np.random.default_rng(0)
    stack = (rng.random((4, 6, 10)) < 0.3).astype(np.uint8)
    stack[2] = 0
    rles = masks_to_rles(stack)
    assert len(rles) == 4 and rles[2] == ""
    back = rles_to_masks(rles, (6, 10))
    assert back.dtype == np.uint8 and back.shape == (4, 6, 10)
    np.testing.assert_array_equal(back, stack)
    np.testing.assert_array_equal(
        rles_to_masks([None, float("nan"), "", "1 1"], (2, 2))[:, 0, 0], [0, 0, 0, 1]
    )
    with pytest.raises(ValueError, match=r"rles\[1\].*'-2'"):
        rles_to_masks(["1 1", "-2 1"], (2, 2))
    with pytest.raises(ValueError, match="3-D"):
        masks_to_rles(np.zeros((2, 2), np.uint8))


# --------------------------------------------------------------------------- real Kaggle strings
def _real_rles() -> list[str]:
    if not SAMPLES.is_dir():
        pytest.skip(f"real Severstal samples not found at {SAMPLES}")
    train = pd.read_csv(SAMPLES / "train.csv", dtype=str, keep_default_na=False)
    legacy = pd.read_csv(SAMPLES / "public-kernel-submission-legacy.csv", dtype=str, keep_default_na=False)
    assert list(train.columns) == ["ImageId", "ClassId", "EncodedPixels"]
    assert list(legacy.columns) == ["ImageId_ClassId", "EncodedPixels"]
    assert len(legacy) == 22024 and (legacy.EncodedPixels == "").sum() == 22024 - 1793
    return train.EncodedPixels.tolist() + legacy.EncodedPixels.tolist()


@pytest.fixture(scope="module")
def real_rles() -> list[str]:
    return _real_rles()


@pytest.fixture(scope="module")
def notebook_rle():
    if not (REFERENCE / "notebook_rle.py").is_file():
        pytest.skip(f"reference notebook_rle.py not found in {REFERENCE}")
    sys.path.insert(0, str(REFERENCE))
    try:
        import notebook_rle
    finally:
        sys.path.remove(str(REFERENCE))
    return notebook_rle


@pytest.mark.slow
def test_every_real_string_round_trips_exactly(real_rles: list[str]) -> None:
    # Every real string turned out to be canonical (no touching runs), so re-encoding reproduces it byte for byte.
    nonempty = [r for r in real_rles if r]
    assert len(nonempty) == 7 + 1793 and set(real_rles) - set(nonempty) == {""}
    assert rle_encode(rle_decode("", (256, 1600))) == "" and rle_area("", (256, 1600)) == 0
    for i, rle in enumerate(nonempty):
        mask = rle_decode(rle, (256, 1600))
        assert rle_encode(mask) == rle, f"string {i} is not reproduced"
        assert rle_area(rle, (256, 1600)) == int(mask.sum()) > 0


@pytest.mark.slow
def test_real_strings_match_the_notebook_functions(real_rles: list[str], notebook_rle) -> None:
    for i, rle in enumerate(r for r in real_rles if r):
        ours = rle_decode(rle, (256, 1600))
        theirs = notebook_rle.rle2mask(rle, shape=(1600, 256))  # the notebook takes (W, H)
        assert np.array_equal(ours, theirs), f"decode differs on string {i}"
        assert rle_encode(ours) == notebook_rle.mask2rle(theirs), f"encode differs on string {i}"


def test_synthetic_masks_match_the_notebook(notebook_rle) -> None:
    rng = np.random.default_rng(1)
    for shape in [(256, 1600), (7, 13), (1, 9), (9, 1)]:
        mask = (rng.random(shape) < 0.4).astype(np.uint8)
        mask[-1, :] = 1  # runs wrapping from one column to the next
        rle = notebook_rle.mask2rle(mask)
        assert rle_encode(mask) == rle
        np.testing.assert_array_equal(rle_decode(rle, shape), notebook_rle.rle2mask(rle, shape=shape[::-1]))
        assert rle_area(rle, shape) == int(mask.sum())
