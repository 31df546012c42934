"""runs: the trigger constraint leads with the customer (and replaces ix_runs_customer); held-back sends indexed

Every batch asks which triggers its customers started; with these the answer comes from two indexes
instead of every run and message of those customers.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_constraint("uq_runs_trigger", "runs", type_="unique")
    op.create_unique_constraint("uq_runs_trigger", "runs", ["customer_id", "campaign_id", "trigger_id"])
    op.drop_index("ix_runs_customer", table_name="runs")
    op.create_index("ix_messages_held_back", "messages", ["customer_id"], postgresql_where="step = -1")


def downgrade() -> None:
    op.drop_index("ix_messages_held_back", table_name="messages")
    op.create_index("ix_runs_customer", "runs", ["customer_id"])
    op.drop_constraint("uq_runs_trigger", "runs", type_="unique")
    op.create_unique_constraint("uq_runs_trigger", "runs", ["campaign_id", "customer_id", "trigger_id"])
