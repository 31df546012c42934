"""the consumer toolkit's shapes: outbox rows carry headers and may have no key; timers are keyed by timer_id

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "outbox", sa.Column("header_names", sa.ARRAY(sa.Text), nullable=False, server_default=sa.text("'{}'"))
    )
    op.add_column(
        "outbox",
        sa.Column("header_values", sa.ARRAY(sa.LargeBinary), nullable=False, server_default=sa.text("'{}'")),
    )
    op.alter_column("outbox", "key", nullable=True)
    # Rows queued before this revision are lifecycle CloudEvents: the relay used to add the header.
    op.execute(
        "UPDATE outbox SET header_names = ARRAY['content-type'],"
        " header_values = ARRAY[convert_to('application/cloudevents+json', 'UTF8')]"
    )
    op.alter_column("timers", "customer_id", new_column_name="timer_id")


def downgrade() -> None:
    op.alter_column("timers", "timer_id", new_column_name="customer_id")
    op.execute("UPDATE outbox SET key = '' WHERE key IS NULL")
    op.alter_column("outbox", "key", nullable=False)
    op.drop_column("outbox", "header_values")
    op.drop_column("outbox", "header_names")
