-- Who a department's broadcast reaches: its waiting patients (a waiting ticket) and the patients
-- waiting for it to open (a subscription). Kept from the scheduler's events, never read from its
-- schema: TicketIssued adds a waiting patient; TurnReached and TicketEnded take them off;
-- OpeningSubscribed adds a subscriber; QueueOpened ends the department's subscriptions.
CREATE TABLE audience (
    tenant_id  text        NOT NULL,
    department text        NOT NULL,
    list       text        NOT NULL CHECK (list IN ('waiting', 'subscribed')),
    chat_id    text        NOT NULL,
    ticket_id  text,  -- waiting: the ticket that puts the patient on the list
    phone      text,
    name       text,
    language   text,
    since      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, department, list, chat_id)
);
CREATE INDEX audience_by_ticket ON audience (tenant_id, ticket_id) WHERE ticket_id IS NOT NULL;

-- When each department last opened. Subscriptions and openings travel on different shards, so a
-- subscription older than the opening can arrive after it: it is over already, and is not added.
CREATE TABLE department_openings (
    tenant_id  text        NOT NULL,
    department text        NOT NULL,
    opened_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, department)
);
