"""Conversions between the service's records and mirror.v1 messages."""

from __future__ import annotations

from google.protobuf import timestamp_pb2
from mirror.v1 import common_pb2, transfer_pb2

from transfer_service.endpoints import EndpointRecord
from transfer_service.jobs import JobRecord, JobState

STATE_TO_PROTO = {
    JobState.WAITING: transfer_pb2.Transfer.STATE_WAITING,
    JobState.RUNNING: transfer_pb2.Transfer.STATE_RUNNING,
    JobState.DONE: transfer_pb2.Transfer.STATE_DONE,
    JobState.ERROR: transfer_pb2.Transfer.STATE_ERROR,
    JobState.CANCELED: transfer_pb2.Transfer.STATE_CANCELED,
    JobState.SUPERSEDED: transfer_pb2.Transfer.STATE_SUPERSEDED,
}
STATE_FROM_PROTO = {v: k for k, v in STATE_TO_PROTO.items()}


def timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def endpoint_to_proto(ep: EndpointRecord) -> transfer_pb2.Endpoint:
    """The endpoint as returned to clients: `secret` left empty, `has_secret` set."""
    return transfer_pb2.Endpoint(
        name=ep.name,
        url=ep.url,
        username=ep.username,
        has_secret=ep.has_secret,
        ca_pem=ep.ca_pem,
        insecure_skip_verify=ep.insecure_skip_verify,
        max_concurrency=ep.max_concurrency,
        requests_per_second=ep.requests_per_second,
        scan_on_push=ep.scan_on_push,
        aliases=list(ep.aliases),
        has_webhook_secret=ep.has_webhook_secret,
        create_time=timestamp(ep.create_time),
        update_time=timestamp(ep.update_time),
    )


def endpoint_from_proto(msg: transfer_pb2.Endpoint) -> EndpointRecord:
    """The input fields of a request's endpoint (output-only fields are ignored)."""
    return EndpointRecord(
        name=msg.name,
        url=msg.url.strip(),
        username=msg.username,
        secret=msg.secret,
        ca_pem=msg.ca_pem,
        insecure_skip_verify=msg.insecure_skip_verify,
        max_concurrency=msg.max_concurrency,
        requests_per_second=msg.requests_per_second,
        scan_on_push=msg.scan_on_push,
        aliases=tuple(msg.aliases),
        webhook_secret=msg.webhook_secret,
    )


def transfer_to_proto(job: JobRecord) -> transfer_pb2.Transfer:
    s, p = job.spec, job.progress
    return transfer_pb2.Transfer(
        id=job.id,
        state=STATE_TO_PROTO[job.state],
        message=job.message,
        source=common_pb2.ImageLocation(
            endpoint=s.src_endpoint, repository=s.src_repository, reference=s.src_reference
        ),
        destination=transfer_pb2.TransferDestination(
            endpoint=s.dst_endpoint, repository=s.dst_repository, tag=s.dst_tag
        ),
        options=transfer_pb2.TransferOptions(
            platforms=list(s.platforms),
            fail_if_tag_exists=s.fail_if_tag_exists,
            source_tag=s.source_tag,
            copy_referrers=list(s.copy_referrers),
        ),
        idempotency_key=job.idempotency_key,
        digest=job.digest,
        media_type=job.media_type,
        bytes_total=p.bytes_total,
        bytes_done=p.bytes_done,
        bytes_skipped=p.bytes_skipped,
        blobs_total=p.blobs_total,
        blobs_done=p.blobs_done,
        blobs_skipped=p.blobs_skipped,
        blobs_mounted=p.blobs_mounted,
        manifests_total=p.manifests_total,
        manifests_done=p.manifests_done,
        attempts=job.attempts,
        create_time=timestamp(job.create_time),
        start_time=timestamp(job.start_time),
        end_time=timestamp(job.end_time),
        # A quick retry's time is kept in the row too; the API shows only a reschedule's.
        next_attempt_time=timestamp(job.next_attempt_time if job.rescheduled else None),
        referrers=[
            transfer_pb2.CopiedReferrer(digest=r.digest, kind=r.kind, tag=r.tag)
            for r in job.referrers
        ],
    )
