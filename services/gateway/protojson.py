"""Protobuf messages as plain dicts for the gateway's JSON models, fast.

`json_format.MessageToDict` inspects every field of every message through
Python reflection on each call, on every /v1/ask (docs/benchmarks.md). This
module does that inspection once per message type and keeps a converter per
type, which then only reads attributes.

The result, fed to the gateway's pydantic models, gives exactly what
`MessageToDict(preserving_proto_field_name=True,
always_print_fields_with_no_presence=True)` gives them (tested on every model):
enums by name, 32-bit floats at their shortest round-tripping value, bytes as
base64, unset message fields and unset proto3 `optional` fields left out (the
model's default applies). 64-bit integers stay numbers rather than the strings
of the proto3 JSON mapping; the models parse both to the same int.
"""

import base64
from collections.abc import Callable
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.internal.type_checkers import ToShortestFloat
from google.protobuf.message import Message

Plain = dict[str, Any]
_converters: dict[str, Callable[[Message], Plain]] = {}


def to_plain(message: Message) -> Plain:
    """`message` as a dict of plain values (see the module docstring)."""
    return _converter(cast(Descriptor, message.DESCRIPTOR))(message)


def _converter(descriptor: Descriptor) -> Callable[[Message], Plain]:
    found = _converters.get(descriptor.full_name)
    if found is not None:
        return found
    fields: list[tuple[str, bool, bool, Callable[[Any], Any]]] = []

    def convert(message: Message) -> Plain:
        plain: Plain = {}
        for name, repeated, presence, value_of in fields:
            if presence and not message.HasField(name):
                continue
            value = getattr(message, name)
            plain[name] = [value_of(item) for item in value] if repeated else value_of(value)
        return plain

    _converters[descriptor.full_name] = convert  # before the fields: types may nest themselves
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            raise TypeError(f"{descriptor.full_name}.{field.name}: map fields are not supported")
        fields.append((field.name, field.is_repeated, field.has_presence, _value_of(field)))
    return convert


def _value_of(field: FieldDescriptor) -> Callable[[Any], Any]:
    if field.message_type is not None:
        nested = field.message_type

        def message_value(value: Message) -> Plain:
            return _converter(nested)(value)

        return message_value
    if field.enum_type is not None:
        names = {value.number: value.name for value in field.enum_type.values}
        return lambda number: names.get(number, number)
    if field.cpp_type == FieldDescriptor.CPPTYPE_FLOAT:
        return _shortest_float
    if field.type == FieldDescriptor.TYPE_BYTES:
        return lambda data: base64.b64encode(data).decode("ascii")
    return _same


def _shortest_float(value: float) -> float | str:
    """As the proto3 JSON mapping writes a 32-bit float (NaN and infinities as strings)."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return float(ToShortestFloat(value))


def _same(value: Any) -> Any:
    return value
