"""customer states as bytes (MessagePack), and room on each page for updates in place

Revision ID: 0006
Revises: 0005

``jsonb`` made PostgreSQL parse and re-render every state on every batch. Existing rows keep their
JSON text as bytes, which the engine still reads. A fill factor of 70 leaves room on each page, so
an update that changes neither stage nor health is a heap-only update that touches no index.
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE customers ALTER COLUMN state TYPE bytea USING convert_to(state::text, 'UTF8')")
    op.execute("ALTER TABLE customers SET (fillfactor = 70)")


def downgrade() -> None:
    # Only JSON rows can go back: a downgrade after the engine wrote MessagePack rows needs a rebuild.
    op.execute("ALTER TABLE customers RESET (fillfactor)")
    op.execute("ALTER TABLE customers ALTER COLUMN state TYPE jsonb USING convert_from(state, 'UTF8')::jsonb")
