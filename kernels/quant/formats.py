"""Integer quantization formats, parsed from short strings such as "w4g128", "w8", "w8a8", "w4a8g128".

Integers live in the signed range [-2^(b-1), 2^(b-1) - 1] with dequant = (q - zero) * scale, the
compressed-tensors convention, so an exporter can write them without re-mapping.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import ConfigError

FIELD = "quant.format"
WEIGHT_BITS = (2, 3, 4, 8)
GROUP_SIZES = (32, 64, 128)
ACT_BITS = (8,)
ACT_WEIGHT_BITS = (4, 8)  # weight bits that have W·A8 kernels
_PATTERN = re.compile(r"w(\d+)(?:a(\d+))?(?:g(\d+))?")


@dataclass(frozen=True)
class QuantFormat:
    """Weights: `weight_bits`, per group of `group_size` inputs (None: one group per output channel).
    Activations: None (weight-only) or int8 per-token dynamic, always symmetric."""

    weight_bits: int
    group_size: int | None = None
    act_bits: int | None = None
    symmetric: bool = True

    def __post_init__(self) -> None:
        if self.weight_bits not in WEIGHT_BITS:
            raise ConfigError(FIELD, f"unsupported weight bits {self.weight_bits} in {self.name!r} "
                              f"(supported: {_join(WEIGHT_BITS)})")
        if self.group_size is not None and self.group_size not in GROUP_SIZES:
            raise ConfigError(FIELD, f"unsupported group size {self.group_size} in {self.name!r} "
                              f"(supported: {_join(GROUP_SIZES)}, or none for per-channel)")
        if self.act_bits is not None and self.act_bits not in ACT_BITS:
            raise ConfigError(FIELD, f"unsupported activation bits {self.act_bits} in {self.name!r} "
                              f"(supported: {_join(ACT_BITS)})")
        if self.act_bits is not None and self.weight_bits not in ACT_WEIGHT_BITS:
            raise ConfigError(FIELD, f"{self.name!r}: activation quantization supports weight bits "
                              f"{_join(ACT_WEIGHT_BITS)} only")
        if self.act_bits is not None and not self.symmetric:  # vLLM's W8A8 / W4A8 int schemes: symmetric weights
            raise ConfigError(FIELD, f"{self.name!r} with quant.symmetric=false: int8-activation formats need "
                              "symmetric weights (no serving kernel takes weight zero points with int8 activations)")

    @property
    def name(self) -> str:
        return _name(self.weight_bits, self.act_bits, self.group_size)

    @property
    def qmin(self) -> int:
        return -(1 << (self.weight_bits - 1))

    @property
    def qmax(self) -> int:
        return (1 << (self.weight_bits - 1)) - 1

    def __str__(self) -> str:
        return f"{self.name} ({'sym' if self.symmetric else 'asym'})"


def parse_format(spec: str, symmetric: bool = True) -> QuantFormat:
    """"w{N}[a8][g{K}]": N weight bits, optional int8 per-token activations, optional group size K."""
    match = _PATTERN.fullmatch(str(spec).strip().lower())
    if match is None:
        raise ConfigError(FIELD, f"cannot parse {spec!r}; expected w{{bits}}[a8][g{{group}}], "
                          "e.g. w4g128, w8, w8a8, w4a8g128")
    bits, act, group = match.groups()
    return QuantFormat(int(bits), int(group) if group else None, int(act) if act else None, symmetric)


def _name(bits: int | str, act: int | str | None, group: int | str | None) -> str:
    return f"w{bits}" + (f"a{act}" if act else "") + (f"g{group}" if group else "")


def format_name(spec: str, bits: int | None = None, group_size: int | None = None) -> str:
    """`spec` with its weight bits and/or group size replaced (group_size 0: per channel); not checked here:
    parse_format checks the result. An unparsable `spec` is returned as is, for parse_format to report."""
    match = _PATTERN.fullmatch(str(spec).strip().lower())
    if match is None:
        return spec
    old_bits, act, group = match.groups()
    return _name(old_bits if bits is None else bits, act, group if group_size is None else (group_size or None))


UNQUANTIZED = ("fp16", "bf16")  # a per-module target that leaves the weights in 16 bits


def parse_target(spec: str, symmetric: bool = True) -> QuantFormat | None:
    """A per-module target (mixed precision): None for fp16/bf16 (not quantized), else `parse_format`."""
    return None if str(spec).strip().lower() in UNQUANTIZED else parse_format(spec, symmetric)


def check_group_size(fmt: QuantFormat, module: str, in_features: int) -> None:
    """Groups must tile a row exactly: kernels and the packed layout have no partial groups."""
    if fmt.group_size is not None and in_features % fmt.group_size:
        raise ConfigError(FIELD, f"group size {fmt.group_size} of {fmt.name!r} does not divide "
                          f"in_features={in_features} of module {module!r}")


def _join(values: tuple[int, ...]) -> str:
    return ", ".join(str(v) for v in values)
