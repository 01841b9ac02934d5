"""One spelling for enum values everywhere: the lowercase short name (`succeeded`, `never`).

A value's short name is its proto name without the prefix its `..._UNSPECIFIED` value
carries (or, for an enum whose zero is a real value such as `Run.ACTION_COPY`, the prefix all
its names share): `Run.STATE_SUCCEEDED` -> `succeeded`, `FACT_KIND_REFERENCE` -> `reference`,
`OVERWRITE_NEVER` -> `never`, `ACTION_DELETE_DRY_RUN` -> `delete_dry_run`. mirrorctl prints
and reads these (flags, YAML, `-o json`), and the SDK accepts them wherever it takes an enum
value; on input `-` stands for `_` (`dry-run` is `dry_run`).
"""

from __future__ import annotations

from enum import IntEnum

from google.protobuf.descriptor import EnumDescriptor

# Enums whose zero value the proto defines as another value: it is shown as that one, so a
# printed value can be given back (Overwrite: "UNSPECIFIED: same as OVERWRITE_ALWAYS").
_ZERO_IS = {"mirror.v1.Overwrite": 1, "mirror.v1.DeletionMode": 1}


def _has_unspecified(enum: EnumDescriptor) -> bool:
    zero = enum.values_by_number.get(0)
    return zero is not None and zero.name.endswith("UNSPECIFIED")


def prefix(enum: EnumDescriptor) -> str:
    """The prefix every value name of `enum` shares (`STATE_` for Run.State, `ACTION_` for
    Run.Action)."""
    if _has_unspecified(enum):
        return enum.values_by_number[0].name[: -len("UNSPECIFIED")]
    names = [v.name for v in enum.values]
    common = names[0]
    for name in names[1:]:
        while not name.startswith(common):
            common = common[:-1]
    # Up to its last '_', so that no value's short name is empty.
    return common[: common.rfind("_") + 1] if "_" in common else ""


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
    skip_zero = _has_unspecified(enum)
    return [
        str(short_name(enum, v.number)) for v in enum.values
        if not (skip_zero and v.number == 0)
    ]


def value_of(enum: EnumDescriptor, value: int | str) -> int:
    """The number of `value`: a number, a short name (`never`) or the full name
    (`OVERWRITE_NEVER`), case-insensitive. ValueError listing the valid names otherwise."""
    if isinstance(value, int):
        return value
    name = value.strip().upper().replace("-", "_")
    for candidate in (prefix(enum) + name, name):
        v = enum.values_by_name.get(candidate)
        if v is not None and not (v.number == 0 and _has_unspecified(enum)):
            return int(v.number)
    raise ValueError(f"unknown {enum.name.lower()} {value!r}; valid: {', '.join(choices(enum))}")


def python_enum(enum: EnumDescriptor, name: str, doc: str = "") -> type[IntEnum]:
    """`enum` as a Python IntEnum whose members are the short names in capitals
    (`RunState.SUCCEEDED`); members are ints, so they go wherever the proto value does. Its
    docstring is `doc` (what the values mean), then the proto enum it mirrors."""
    members = {
        str(short_name(enum, v.number)).upper(): v.number
        for v in enum.values
        if not (_has_unspecified(enum) and v.number == 0)
    }
    cls = IntEnum(name, members)  # type: ignore[misc]
    # help(RunState) and the docs tools read __doc__: say what it is and where it comes from.
    cls.__doc__ = (f"{doc} " if doc else "") + (
        f"The values of {enum.full_name} ({', '.join(members)}); members are ints, accepted "
        "wherever the proto value is, and `.name.lower()` is the spelling of mirrorctl and "
        "-o json.")
    return cls


def _build() -> dict[str, type[IntEnum]]:
    from mirror.v1 import common_pb2, gateway_pb2, policy_pb2, transfer_pb2

    return {
        "RunState": python_enum(gateway_pb2.Run.State.DESCRIPTOR, "RunState",
                                "Where a policy run is (Run.state)."),
        "RunTrigger": python_enum(gateway_pb2.Run.Trigger.DESCRIPTOR, "RunTrigger",
                                  "What started a run (Run.trigger)."),
        "RunAction": python_enum(gateway_pb2.Run.Action.DESCRIPTOR, "RunAction",
                                 "What a run does at the destination (Run.action)."),
        "EventType": python_enum(gateway_pb2.EventType.DESCRIPTOR, "EventType",
                                 "The outbound notifications a subscription can ask for."),
        "TransferState": python_enum(transfer_pb2.Transfer.State.DESCRIPTOR, "TransferState",
                                     "Where a transfer is (Transfer.state)."),
        "Overwrite": python_enum(policy_pb2.Overwrite.DESCRIPTOR, "Overwrite",
                                 "A destination tag that holds another digest: move it or "
                                 "leave it (Policy.overwrite)."),
        "DeletionMode": python_enum(policy_pb2.DeletionMode.DESCRIPTOR, "DeletionMode",
                                    "Whether a tag deleted at the source is deleted at the "
                                    "destination (Policy.deletions)."),
        "FactKind": python_enum(common_pb2.FactKind.DESCRIPTOR, "FactKind",
                                "The kinds of facts about an image a rule can need."),
    }


_ENUMS = _build()
RunState = _ENUMS["RunState"]
RunTrigger = _ENUMS["RunTrigger"]
RunAction = _ENUMS["RunAction"]
EventType = _ENUMS["EventType"]
TransferState = _ENUMS["TransferState"]
Overwrite = _ENUMS["Overwrite"]
DeletionMode = _ENUMS["DeletionMode"]
FactKind = _ENUMS["FactKind"]
