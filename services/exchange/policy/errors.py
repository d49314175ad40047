"""The refusals of the policy engine: one exception, a machine-readable ``code`` and a human ``detail``."""

from __future__ import annotations

from typing import Final

__all__ = ["CODES", "PolicyError"]

SYNTAX: Final = "policy.syntax"
TOO_LONG: Final = "policy.too_long"
TOO_COMPLEX: Final = "policy.too_complex"
MULTIPLE_STATEMENTS: Final = "policy.multiple_statements"
NOT_A_SELECT: Final = "policy.not_a_select"
UNSUPPORTED_SYNTAX: Final = "policy.unsupported_syntax"
RECURSIVE_QUERY: Final = "policy.recursive_query"
TABLE_NOT_ALLOWED: Final = "policy.table_not_allowed"
FUNCTION_NOT_ALLOWED: Final = "policy.function_not_allowed"
UNKNOWN_COLUMN: Final = "policy.unknown_column"
AMBIGUOUS: Final = "policy.ambiguous"
RESERVED_NAME: Final = "policy.reserved_name"
AGGREGATION_REQUIRED: Final = "policy.aggregation_required"
AGGREGATE_NOT_ALLOWED: Final = "policy.aggregate_not_allowed"
AGGREGATE_ARGUMENT: Final = "policy.aggregate_argument"
MIN_MAX_PERSONAL: Final = "policy.min_max_personal"
IDENTIFIER_FILTER: Final = "policy.identifier_filter"
IDENTIFIER_GROUP_KEY: Final = "policy.identifier_group_key"
IDENTIFIER_COLUMN: Final = "policy.identifier_column"
WINDOW_FUNCTION: Final = "policy.window_function"
LIMIT_NOT_ALLOWED: Final = "policy.limit_not_allowed"
UNSUPPORTED_SHAPE: Final = "policy.unsupported_shape"

CODES: Final[frozenset[str]] = frozenset(
    {
        SYNTAX,
        TOO_LONG,
        TOO_COMPLEX,
        MULTIPLE_STATEMENTS,
        NOT_A_SELECT,
        UNSUPPORTED_SYNTAX,
        RECURSIVE_QUERY,
        TABLE_NOT_ALLOWED,
        FUNCTION_NOT_ALLOWED,
        UNKNOWN_COLUMN,
        AMBIGUOUS,
        RESERVED_NAME,
        AGGREGATION_REQUIRED,
        AGGREGATE_NOT_ALLOWED,
        AGGREGATE_ARGUMENT,
        MIN_MAX_PERSONAL,
        IDENTIFIER_FILTER,
        IDENTIFIER_GROUP_KEY,
        IDENTIFIER_COLUMN,
        WINDOW_FUNCTION,
        LIMIT_NOT_ALLOWED,
        UNSUPPORTED_SHAPE,
    }
)


class PolicyError(Exception):
    """A query the policy refuses; ``code`` is one of :data:`CODES`, ``detail`` says what to change."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
