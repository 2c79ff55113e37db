"""Copy fields between domain dataclasses and protobuf messages by name.

Domain types mirror the contract's messages field for field; copying by name
keeps servicers to one line per conversion instead of a dozen assignments.
"""

import dataclasses
from typing import Any, TypeVar

from google.protobuf.message import Message

MessageT = TypeVar("MessageT", bound=Message)
DataT = TypeVar("DataT")


def to_proto(obj: Any, message_type: type[MessageT]) -> MessageT:
    """A `message_type` with every field that `obj` (a dataclass) has of the same name."""
    names = message_type.DESCRIPTOR.fields_by_name
    return message_type(
        **{f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name in names}
    )


def from_proto(message: Message, data_type: type[DataT]) -> DataT:
    """A `data_type` dataclass built from the same-named fields of `message`.

    Repeated fields become tuples: protobuf's containers are mutable, unhashable
    and tied to the message, none of which a frozen dataclass field should be.
    """
    fields = dataclasses.fields(data_type)  # type: ignore[arg-type]
    return data_type(**{f.name: _value(message, f.name) for f in fields})


def _value(message: Message, name: str) -> Any:
    value = getattr(message, name)
    return tuple(value) if message.DESCRIPTOR.fields_by_name[name].is_repeated else value
