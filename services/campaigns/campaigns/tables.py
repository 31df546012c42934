"""Tables the campaigns service owns (in its own schema); it never reads another service's tables.

Personal data (addresses, traits, runs, messages, purchases) is keyed by customer id so an erasure
deletes it in one statement per table; ``campaign_counts`` keeps the anonymous figures the stats
need, so they stay right after an erasure.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

from clm_shared.consumer_tables import dedup_table, outbox_table, sequences_table, timers_table

metadata = MetaData()

TOUCHPOINT_DEDUP = "processed_messages"
EVENT_DEDUP = "processed_events"

processed_messages = dedup_table(metadata, TOUCHPOINT_DEDUP)
processed_events = dedup_table(metadata, EVENT_DEDUP)
last_sequences = sequences_table(metadata)
outbox = outbox_table(metadata)
timers = timers_table(metadata)  # timer_id "run:<run_id>": a run's wait

# Every version of every campaign, immutable: a run finishes the version it started.
campaign_versions = Table(
    "campaign_versions",
    metadata,
    Column("campaign_id", Text, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("definition", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# The current version and status (live, paused, archived) of each campaign.
campaigns = Table(
    "campaigns",
    metadata,
    Column("campaign_id", Text, primary_key=True),
    Column("version", Integer, nullable=False),
    Column("status", Text, nullable=False, server_default="live"),
    Column("origin", Text, nullable=False, server_default="api"),  # shipped, folder or api
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# What campaigns know about a customer: address, timezone and traits (identify), stage and health.
profiles = Table(
    "profiles",
    metadata,
    Column("customer_id", Text, primary_key=True),
    Column("email", Text, nullable=True),
    Column("timezone", Text, nullable=True),
    Column("traits", JSONB, nullable=False, server_default="{}"),
    Column("stage", Text, nullable=True),
    Column("health", Text, nullable=True),
    Column("event_sequence", BigInteger, nullable=False, server_default="0"),  # of its campaign events
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# anonymousId (or a merged id) -> the customer id the stage engine uses.
identities = Table(
    "identities",
    metadata,
    Column("alias_id", Text, primary_key=True),
    Column("customer_id", Text, nullable=False, index=True),
)

# Customers who unsubscribed or whose address hard-bounced: no campaign email reaches them.
suppressions = Table(
    "suppressions",
    metadata,
    Column("customer_id", Text, primary_key=True),
    Column("reason", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)

# Products each customer bought, for "bought together" recommendations.
purchases = Table(
    "purchases",
    metadata,
    Column("customer_id", Text, primary_key=True),
    Column("product_id", Text, primary_key=True),
    Column("name", Text, nullable=True),
    Column("quantity", BigInteger, nullable=False, server_default="1"),
    Index("ix_purchases_product", "product_id"),
)

# One customer's way through one campaign version, started by one trigger.
runs = Table(
    "runs",
    metadata,
    Column("run_id", BigInteger, primary_key=True, autoincrement=True),
    Column("campaign_id", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("customer_id", Text, nullable=False),
    Column("trigger_id", Text, nullable=False),
    Column("trigger", JSONB, nullable=False),  # event name, time and properties, for templates and matching
    Column("status", Text, nullable=False),  # active, waiting, done, exited, holdout
    Column("step", Integer, nullable=False, server_default="0"),
    Column("variant", Text, nullable=True),
    Column("holdout", Boolean, nullable=False, server_default="false"),
    Column("entered_at", DateTime(timezone=True), nullable=False),
    Column("step_since", DateTime(timezone=True), nullable=False),
    Column("due_at", DateTime(timezone=True), nullable=True),
    Column("waiting_for", Text, nullable=True),  # the event a wait_for_event step waits for
    Column("converted_at", DateTime(timezone=True), nullable=True),  # an order after a send: attribution
    Column("entry_converted_at", DateTime(timezone=True), nullable=True),  # an order after entry: the uplift
    # Customer first: it also serves every per-customer lookup (a batch's customers' runs).
    UniqueConstraint("customer_id", "campaign_id", "trigger_id", name="uq_runs_trigger"),
    Index("ix_runs_members", "campaign_id", "status", "run_id"),
)

# Every send and every held-back send, with why: what /v1/customers/{id}/messages shows.
messages = Table(
    "messages",
    metadata,
    Column("message_id", BigInteger, primary_key=True, autoincrement=True),
    Column("run_id", BigInteger, nullable=True),
    Column("campaign_id", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("customer_id", Text, nullable=False),
    Column("trigger_id", Text, nullable=False),
    Column("step", Integer, nullable=False),  # -1: held back at entry (stale, holdout)
    Column("step_name", Text, nullable=False),
    Column("channel", Text, nullable=False),
    Column("variant", Text, nullable=True),
    Column("transactional", Boolean, nullable=False, server_default="false"),
    Column("status", Text, nullable=False),  # pending, sent, failed, held
    Column("reason", Text, nullable=True),  # capped, quiet_hours, suppressed, holdout, stale, paused
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    UniqueConstraint("campaign_id", "version", "customer_id", "trigger_id", "step", name="uq_messages_send"),
    Index("ix_messages_customer", "customer_id", "created_at"),
    Index("ix_messages_held_back", "customer_id", postgresql_where="step = -1"),
    Index("ix_messages_due", "due_at", postgresql_where="status = 'pending'"),
)

# Anonymous counters per campaign (entered, sent, failed, exited, converted, holdout, held:<reason>...).
campaign_counts = Table(
    "campaign_counts",
    metadata,
    Column("campaign_id", Text, primary_key=True),
    Column("counter", Text, primary_key=True),
    Column("count", BigInteger, nullable=False, server_default="0"),
)
