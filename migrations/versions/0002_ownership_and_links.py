"""API keys: admin flag and per-key quotas; studies: kind and the study a confirmation checks.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bnsweep_api_keys") as batch:
        batch.add_column(sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("max_active_studies", sa.Integer, nullable=True))
        batch.add_column(sa.Column("max_queued_trials", sa.Integer, nullable=True))
    with op.batch_alter_table("bnsweep_studies") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="search"))
        batch.add_column(
            sa.Column(
                "parent_id",
                sa.Integer,
                sa.ForeignKey(
                    "bnsweep_studies.id", name="fk_bnsweep_studies_parent", ondelete="SET NULL"
                ),
                nullable=True,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("bnsweep_studies") as batch:
        batch.drop_constraint("fk_bnsweep_studies_parent", type_="foreignkey")
        batch.drop_column("parent_id")
        batch.drop_column("kind")
    with op.batch_alter_table("bnsweep_api_keys") as batch:
        batch.drop_column("max_queued_trials")
        batch.drop_column("max_active_studies")
        batch.drop_column("admin")
