"""The SDK's Python enums (issue 15): one member per proto value, in the one short spelling,
usable wherever the proto value goes."""

from __future__ import annotations

from mirror.enums import (
    DeletionMode,
    Overwrite,
    RunAction,
    RunState,
    TransferState,
    short_name,
)
from mirror.v1 import gateway_pb2, policy_pb2, transfer_pb2


def test_members_are_the_proto_values_under_their_short_names() -> None:
    for py, proto in (
        (RunState, gateway_pb2.Run.State),
        (RunAction, gateway_pb2.Run.Action),
        (TransferState, transfer_pb2.Transfer.State),
    ):
        for member in py:
            assert member.name.lower() == short_name(proto.DESCRIPTOR, member.value)
            assert proto.Name(member.value).endswith(member.name)
    assert RunState.SUCCEEDED == gateway_pb2.Run.STATE_SUCCEEDED
    assert TransferState.SUPERSEDED == transfer_pb2.Transfer.STATE_SUPERSEDED
    assert RunAction.DELETE_DRY_RUN == gateway_pb2.Run.ACTION_DELETE_DRY_RUN
    assert "UNSPECIFIED" not in RunState.__members__


def test_members_go_into_messages_and_come_back() -> None:
    p = policy_pb2.Policy(overwrite=Overwrite.NEVER, deletions=DeletionMode.PROPAGATE)
    assert Overwrite(p.overwrite) is Overwrite.NEVER
    assert DeletionMode(p.deletions) is DeletionMode.PROPAGATE
    run = gateway_pb2.Run(state=RunState.BLOCKED)
    assert RunState(run.state).name == "BLOCKED"
