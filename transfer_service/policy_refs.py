"""Which policies use an endpoint, asked of the policy service over gRPC (DeleteEndpoint)."""

from __future__ import annotations

import grpc
from grpc import aio
from mirror.v1 import policy_pb2, policy_pb2_grpc

from servicekit.errors import unavailable

ASK_TIMEOUT_SECONDS = 10.0
_PAGE_SIZE = 100
_MAX_PAGES = 100


class PolicyRefs:
    """Asks `PolicyService.ListPolicies(endpoint=...)`; any failure to ask is UNAVAILABLE, so a
    caller never acts as if no policy used the endpoint when it could not find out."""

    def __init__(self, channel: aio.Channel, timeout: float = ASK_TIMEOUT_SECONDS) -> None:
        self._stub = policy_pb2_grpc.PolicyServiceStub(channel)
        self._timeout = timeout

    async def using(self, endpoint: str) -> list[str]:
        """Names of the policies whose source or target is `endpoint`."""
        names: list[str] = []
        token = ""
        for _ in range(_MAX_PAGES):
            try:
                resp = await self._stub.ListPolicies(
                    policy_pb2.ListPoliciesRequest(
                        endpoint=endpoint, page_size=_PAGE_SIZE, page_token=token
                    ),
                    timeout=self._timeout,
                )
            except grpc.RpcError as err:
                code = err.code() if callable(getattr(err, "code", None)) else None  # type: ignore[attr-defined]
                name = code.name if isinstance(code, grpc.StatusCode) else "no answer"
                raise unavailable(
                    f"cannot ask the policy service which policies use endpoint {endpoint!r} "
                    f"({name}); nothing was deleted, try again when it is reachable"
                ) from err
            # Filtered here as well: the answer decides a delete, so it must hold exactly.
            names += [
                p.name
                for p in resp.policies
                if endpoint in (p.source.endpoint, p.target.endpoint)
            ]
            token = resp.next_page_token
            if not token:
                return names
        raise unavailable(
            f"too many policies to check for endpoint {endpoint!r}; nothing was deleted"
        )
