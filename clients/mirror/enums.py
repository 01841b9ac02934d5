"""One spelling for enum values everywhere: the lowercase short name (`succeeded`, `never`).

A value's short name is its proto name without the prefix its `..._UNSPECIFIED` value
carries: `Run.STATE_SUCCEEDED` -> `succeeded`, `FACT_KIND_REFERENCE` -> `reference`,
`OVERWRITE_NEVER` -> `never`. mirrorctl prints and reads these (flags, YAML, `-o json`), and
the SDK accepts them wherever it takes an enum value.
"""

from __future__ import annotations

from google.protobuf.descriptor import EnumDescriptor

# Enums whose zero value the proto defines as another value: it is shown as that one, so a
# printed value can be given back (Overwrite: "UNSPECIFIED: same as OVERWRITE_ALWAYS").
_ZERO_IS = {"mirror.v1.Overwrite": 1}


def prefix(enum: EnumDescriptor) -> str:
    """The prefix every value name of `enum` shares (`STATE_` for Run.State)."""
    zero = enum.values_by_number.get(0)
    if zero is not None and zero.name.endswith("UNSPECIFIED"):
        return zero.name[: -len("UNSPECIFIED")]
    return ""


def short_name(enum: EnumDescriptor, value: int) -> str | int:
    """`succeeded` for Run.STATE_SUCCEEDED; a number the descriptor does not know stays one."""
    if value == 0:
        value = _ZERO_IS.get(enum.full_name, 0)
    v = enum.values_by_number.get(value)
    if v is None:
        return value
    return v.name.removeprefix(prefix(enum)).lower()


def choices(enum: EnumDescriptor) -> list[str]:
    """Every short name but `unspecified`, in number order (for flags and messages)."""
    return [
        str(short_name(enum, v.number)) for v in enum.values if v.number != 0
    ]


def value_of(enum: EnumDescriptor, value: int | str) -> int:
    """The number of `value`: a number, a short name (`never`) or the full name
    (`OVERWRITE_NEVER`), case-insensitive. ValueError listing the valid names otherwise."""
    if isinstance(value, int):
        return value
    name = value.strip().upper()
    for candidate in (prefix(enum) + name, name):
        v = enum.values_by_name.get(candidate)
        if v is not None and v.number != 0:
            return int(v.number)
    raise ValueError(f"unknown {enum.name.lower()} {value!r}; valid: {', '.join(choices(enum))}")
