"""Schema building blocks shared by every domain."""
from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, pre_load

from .money import AMOUNT_PATTERN, InvalidAmount, format_amount, parse_amount


def _nul_fields(data: Any, path: str = "") -> list[str]:
    if isinstance(data, str):
        return [path or "_schema"] if "\x00" in data else []
    if isinstance(data, Mapping):  # query arguments come as a MultiDictProxy, not a dict
        return [hit for key, value in data.items() for hit in _nul_fields(value, str(key))]
    if isinstance(data, list):
        return [hit for value in data for hit in _nul_fields(value, path)]
    return []


class BaseSchema(Schema):
    """Unknown input fields are an error (no mass assignment), also in nested schemas."""

    class Meta:
        unknown = RAISE
        ordered = True

    @pre_load(pass_collection=True)
    def reject_nul_characters(self, data: Any, **kwargs: Any) -> Any:
        """NUL is never valid text here, and PostgreSQL cannot store it (it would be a 500)."""
        hits = _nul_fields(data)
        if hits:
            raise ValidationError({field: ["Must not contain NUL characters."] for field in hits})
        return data


class MoneyField(fields.Field):
    """Money in: a string or JSON number written as `money.AMOUNT_PATTERN`, 0 < x ≤ 1,000,000.00. Money out:
    `"81.00"`. Documented as what it is on the wire: a string."""

    def __init__(self, *, allow_negative: bool = False, **kwargs: Any):
        documented = {
            "type": "string",
            "pattern": f"^{AMOUNT_PATTERN}$",
            "example": "81.00",
            "description": "ZNC, a decimal string with two places (input also accepts a JSON number written "
                           "the same way; no exponent)",
        }
        kwargs["metadata"] = {**documented, **kwargs.get("metadata", {})}
        super().__init__(**kwargs)
        self.allow_negative = allow_negative

    def _serialize(self, value: Decimal | None, attr, obj, **kwargs) -> str | None:
        return None if value is None else format_amount(value)

    def _deserialize(self, value: Any, attr, data, **kwargs) -> Decimal:
        try:
            return parse_amount(value, allow_negative=self.allow_negative)
        except InvalidAmount as exc:
            raise ValidationError(str(exc)) from None
