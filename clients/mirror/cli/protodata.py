"""Messages to plain data (-o json/yaml) and back (YAML files), in mirrorctl's one spelling.

Output has every field (zero, false and empty too; an unset message or timestamp is null),
the proto field names (snake_case), 64-bit integers as numbers and enum values as their
lowercase short names (`succeeded`, `never`), the same names the flags and YAML files take.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf import message as pb_message
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from mirror import enums

# Input-only fields: never returned by the server, so never printed (has_secret says more).
_INPUT_ONLY = {"mirror.v1.Endpoint.secret", "mirror.v1.Endpoint.webhook_secret"}
_INT64 = {
    FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64,
}


def message_data(msg: pb_message.Message) -> dict[str, Any]:
    """`msg` as plain data with every field; deprecated and input-only fields (never set in
    answers) are left out."""
    raw = json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True,
        use_integers_for_enums=True,
    )
    return _message(raw, msg.DESCRIPTOR)


def _is_map(f: FieldDescriptor) -> bool:
    return f.message_type is not None and f.message_type.GetOptions().map_entry


def _map_value(f: FieldDescriptor) -> FieldDescriptor:
    assert f.message_type is not None  # only called for map fields
    return f.message_type.fields_by_name["value"]


def _well_known(desc: Descriptor) -> bool:
    # Timestamp, Duration, FieldMask...: their JSON form (a string) is already the one to show.
    return desc.full_name.startswith("google.protobuf.")


def _message(raw: dict[str, Any], desc: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in desc.fields:
        if f.GetOptions().deprecated or f.full_name in _INPUT_ONLY:
            continue
        if f.name not in raw:
            out[f.name] = None  # a field with presence that is not set
            continue
        value = raw[f.name]
        if _is_map(f):
            vf = _map_value(f)
            out[f.name] = {k: _single(vf, v) for k, v in value.items()}
        elif f.is_repeated:
            out[f.name] = [_single(f, v) for v in value]
        else:
            out[f.name] = _single(f, value)
    return out


def _single(f: FieldDescriptor, value: Any) -> Any:
    if f.enum_type is not None:
        return enums.short_name(f.enum_type, int(value))
    if f.type in _INT64:
        return int(value)
    if f.message_type is not None and not _well_known(f.message_type):
        return _message(value, f.message_type)
    return value


def parse(doc: dict[str, Any], message: pb_message.Message) -> pb_message.Message:
    """Fill `message` from a YAML/JSON mapping (camelCase or snake_case names; enum values
    by short name, full name or number). ValueError / json_format.ParseError when invalid."""
    json_format.ParseDict(_full_enum_names(doc, message.DESCRIPTOR), message)
    return message


def field_of(desc: Descriptor, key: str) -> FieldDescriptor | None:
    """The field a document key names (camelCase or snake_case)."""
    return desc.fields_by_camelcase_name.get(key) or desc.fields_by_name.get(key)


def _full_enum_names(doc: Any, desc: Any) -> Any:
    if not isinstance(doc, dict):
        return doc
    out = {}
    for key, value in doc.items():
        f = field_of(desc, key) if isinstance(key, str) else None
        if f is not None and value is not None:
            if _is_map(f):
                vf = _map_value(f)
                if isinstance(value, dict):
                    value = {k: _full_single(vf, v) for k, v in value.items()}
            elif f.is_repeated and isinstance(value, list):
                value = [_full_single(f, v) for v in value]
            else:
                value = _full_single(f, value)
        out[key] = value
    return out


def _full_single(f: FieldDescriptor, value: Any) -> Any:
    if f.enum_type is not None and isinstance(value, str):
        number = enums.value_of(f.enum_type, value)
        return f.enum_type.values_by_number[number].name
    if f.message_type is not None and not _well_known(f.message_type):
        return _full_enum_names(value, f.message_type)
    return value
