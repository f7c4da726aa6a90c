"""Format strings: what parses, and one-line ConfigErrors for what does not."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from kernels.quant import QuantFormat, check_group_size, parse_format


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("w4g128", QuantFormat(4, 128)),
        ("w3g32", QuantFormat(3, 32)),
        ("w2g64", QuantFormat(2, 64)),
        ("w8", QuantFormat(8)),
        ("W4G128", QuantFormat(4, 128)),
        ("w8a8", QuantFormat(8, None, 8)),
        ("w4a8", QuantFormat(4, None, 8)),
        ("w4a8g128", QuantFormat(4, 128, 8)),
    ],
)
def test_parse(spec: str, expected: QuantFormat) -> None:
    fmt = parse_format(spec)
    assert fmt == expected
    assert parse_format(fmt.name) == fmt
    if expected.act_bits is None:  # int8-activation formats refuse zero points (below)
        assert parse_format(spec, symmetric=False).symmetric is False


def test_ranges() -> None:
    assert (QuantFormat(4).qmin, QuantFormat(4).qmax) == (-8, 7)
    assert (QuantFormat(3).qmin, QuantFormat(3).qmax) == (-4, 3)
    assert str(QuantFormat(4, 128, symmetric=False)) == "w4g128 (asym)"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("w5g128", "unsupported weight bits 5 in 'w5g128' (supported: 2, 3, 4, 8)"),
        ("w16", "unsupported weight bits 16"),
        ("w4g96", "unsupported group size 96 in 'w4g96' (supported: 32, 64, 128, or none for per-channel)"),
        ("w4g16", "unsupported group size 16"),
        ("w8a4", "unsupported activation bits 4"),
        ("w3a8", "'w3a8': activation quantization supports weight bits 4, 8 only"),
        ("int4", "cannot parse 'int4'"),
        ("w4g", "cannot parse 'w4g'"),
    ],
)
def test_bad_format(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_format(spec)
    assert err.value.field == "quant.format"
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_group_must_divide_in_features() -> None:
    check_group_size(parse_format("w4g64"), "mlp.down_proj", 192)
    check_group_size(parse_format("w4"), "mlp.down_proj", 100)  # per-channel: anything goes
    with pytest.raises(ConfigError) as err:
        check_group_size(parse_format("w4g128"), "mlp.down_proj", 192)
    assert str(err.value) == ("config error: quant.format: group size 128 of 'w4g128' does not divide "
                              "in_features=192 of module 'mlp.down_proj'")


def test_int8_activations_need_symmetric_weights() -> None:
    assert parse_format("w4g128", symmetric=False).symmetric is False  # weight-only: zero points are served
    for spec in ("w8a8", "w4a8g128"):
        with pytest.raises(ConfigError, match="symmetric weights"):
            parse_format(spec, symmetric=False)
