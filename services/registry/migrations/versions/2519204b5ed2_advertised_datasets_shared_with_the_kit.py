"""advertised datasets shared with the kit

Revision ID: 2519204b5ed2
Revises: 9fb79534818e
Create Date: 2026-11-29 05:42:45.316326
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "2519204b5ed2"
down_revision: str | None = "9fb79534818e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The registry's own table becomes the kit's, shared with the exchange: same columns, kept rows.
    with op.batch_alter_table("registry_dataset", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_registry_dataset_territory"))
    op.rename_table("registry_dataset", "advertised_dataset")
    with op.batch_alter_table("advertised_dataset", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_advertised_dataset_territory"), ["territory"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("advertised_dataset", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_advertised_dataset_territory"))
    op.rename_table("advertised_dataset", "registry_dataset")
    with op.batch_alter_table("registry_dataset", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_registry_dataset_territory"), ["territory"], unique=False)
