"""Reads that do not grow with the study: trial tallies and summaries, cached analyses, and one
index on Optuna's ``trials`` table.

The index ``bnsweep_ix_trials_study_state`` on ``trials (study_id, state)`` is the only change to a
table of Optuna's: created with IF NOT EXISTS, under a name of ours, never altering a column. It
serves the per-trial queries that filter a study's trials by state: Optuna's own stale-trial
check (``fail_stale_trials``), our orphan adoption, and ``get_all_trials(states=...)``; without it
each of them reads every trial row of the study.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TRIALS_INDEX = "bnsweep_ix_trials_study_state"
_SUMMARY_INDEXES = {
    "ix_bnsweep_trial_summaries_number": ["optuna_study_id", "number"],
    "ix_bnsweep_trial_summaries_state": ["optuna_study_id", "state", "number"],
    "ix_bnsweep_trial_summaries_up": ["optuna_study_id", "valueless", "value_up", "number"],
    "ix_bnsweep_trial_summaries_down": ["optuna_study_id", "valueless", "value_down", "number"],
    "ix_bnsweep_trial_summaries_state_up": [
        "optuna_study_id",
        "state",
        "valueless",
        "value_up",
        "number",
    ],
    "ix_bnsweep_trial_summaries_state_down": [
        "optuna_study_id",
        "state",
        "valueless",
        "value_down",
        "number",
    ],
    "ix_bnsweep_trial_summaries_front": ["optuna_study_id", "on_front"],
}


def upgrade() -> None:
    op.create_table(
        "bnsweep_trial_tallies",
        sa.Column("optuna_study_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("complete", sa.Integer, nullable=False),
        sa.Column("pruned", sa.Integer, nullable=False),
        sa.Column("fail", sa.Integer, nullable=False),
        sa.Column("running", sa.Integer, nullable=False),
        sa.Column("waiting", sa.Integer, nullable=False),
        sa.Column("synced_trial_id", sa.Integer, nullable=False),
        sa.Column("best_trial_id", sa.Integer, nullable=True),
        sa.Column("best_value", sa.Double, nullable=True),
        sa.Column(
            "synced_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )
    op.create_table(
        "bnsweep_trial_summaries",
        sa.Column("trial_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("optuna_study_id", sa.Integer, nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("value", sa.Double, nullable=True),
        sa.Column("second_value", sa.Double, nullable=True),
        sa.Column("valueless", sa.Boolean, nullable=False),
        sa.Column("value_up", sa.Double, nullable=False),
        sa.Column("value_down", sa.Double, nullable=False),
        sa.Column("on_front", sa.Boolean, nullable=False),
    )
    for name, columns in _SUMMARY_INDEXES.items():
        op.create_index(name, "bnsweep_trial_summaries", columns)
    op.create_table(
        "bnsweep_analyses",
        sa.Column(
            "study_id",
            sa.Integer,
            sa.ForeignKey("bnsweep_studies.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("trials_counted", sa.Integer, nullable=True),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_s", sa.Double, nullable=True),
        sa.Column(
            "requested_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(TRIALS_INDEX, "trials", ["study_id", "state"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index(TRIALS_INDEX, table_name="trials", if_exists=True)
    op.drop_table("bnsweep_analyses")
    for name in _SUMMARY_INDEXES:
        op.drop_index(name, table_name="bnsweep_trial_summaries")
    op.drop_table("bnsweep_trial_summaries")
    op.drop_table("bnsweep_trial_tallies")
