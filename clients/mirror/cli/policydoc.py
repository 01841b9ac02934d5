"""One reading of a policy written as YAML (`policy create -f` and `apply -f` share it).

    name: promote-stable
    source: {endpoint: dev, repository: "team/**"}
    rule: tag endswith "stable" and critical_vulns == 0
    target: {endpoint: qa, repository: "qa/{path}"}
    tagTemplate: "%n"
    overwrite: never              # or always (the default)
    allowIncompleteFacts: false   # true: evaluate even without vulnerability data
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from mirror.cli import protodata
from mirror.cli.context import EXIT_INVALID, CliError
from mirror.v1 import policy_pb2

FIELDS_HINT = (
    "fields: name, description, source {endpoint, repository}, rule, target {endpoint, "
    "repository}, tagTemplate, timeZone, enabled, overwrite (always|never), "
    "allowIncompleteFacts"
)
_LEGACY = ("sourceRepository", "source_repository")


def legacy_source(doc: dict[str, Any], where: str) -> CliError | None:
    """The error for a document in the old shape (`sourceRepository`), naming the new field."""
    key = next((k for k in _LEGACY if k in doc), None)
    if key is None:
        return None
    repo = doc[key] if isinstance(doc[key], str) else "team/website"
    return CliError(
        f"{where}: {key} was replaced by source: {{endpoint, repository}}: a policy reads "
        "from one endpoint",
        EXIT_INVALID,
        hint=f"write: source: {{endpoint: ENDPOINT, repository: {repo}}} (ENDPOINT: the "
        "registry's name in 'mirrorctl endpoint list')",
    )


def read(doc: Any, where: str) -> tuple[policy_pb2.Policy, set[str]]:
    """The Policy a mapping describes, and the top-level fields it names; CliError (exit 4)."""
    if not isinstance(doc, dict):
        raise CliError(f"{where}: expected a mapping of policy fields", EXIT_INVALID)
    legacy = legacy_source(doc, where)
    if legacy is not None:
        raise legacy
    msg = policy_pb2.Policy()
    try:
        protodata.parse(doc, msg)
    except (json_format.ParseError, ValueError) as err:
        raise CliError(f"{where}: {err}", EXIT_INVALID, hint=FIELDS_HINT) from None
    names = {f.name for f, _ in msg.ListFields()}
    for key in doc:
        field = protodata.field_of(policy_pb2.Policy.DESCRIPTOR, key)
        if field is not None:
            names.add(field.name)
    return msg, names
