-- Departments, their schedules, queue status with its audit log, and tickets.
-- Times are UTC; a department's timezone says how its schedule reads.

CREATE TABLE departments (
    id               uuid        PRIMARY KEY,
    tenant_id        text        NOT NULL,
    code             text        NOT NULL CHECK (code ~ '^[A-Z0-9][A-Z0-9_-]{0,15}$'),
    name             text        NOT NULL,
    timezone         text        NOT NULL,
    ticket_prefix    text        NOT NULL CHECK (ticket_prefix ~ '^[A-Z0-9]{1,8}$'),
    phone_region     text        NOT NULL CHECK (phone_region ~ '^[A-Z]{2}$'),
    on_close         text        NOT NULL DEFAULT 'cancel' CHECK (on_close IN ('cancel', 'carry_over')),
    almost_position  integer     NOT NULL DEFAULT 3 CHECK (almost_position >= 1),
    default_service_s double precision NOT NULL DEFAULT 300 CHECK (default_service_s > 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, code)
);

-- Weekly opening hours in the department's local time; a day may have several ranges.
CREATE TABLE schedules (
    department_id uuid     NOT NULL REFERENCES departments (id) ON DELETE CASCADE,
    weekday       smallint NOT NULL CHECK (weekday BETWEEN 1 AND 7),  -- ISO: 1 = Monday
    opens_at      time     NOT NULL,
    closes_at     time     NOT NULL,
    CHECK (closes_at > opens_at),
    PRIMARY KEY (department_id, weekday, opens_at)
);

-- Open outside hours or closed within them, for a while and for a reason.
CREATE TABLE overrides (
    id            uuid        PRIMARY KEY,
    department_id uuid        NOT NULL REFERENCES departments (id) ON DELETE CASCADE,
    is_open       boolean     NOT NULL,
    starts_at     timestamptz NOT NULL,
    ends_at       timestamptz NOT NULL CHECK (ends_at > starts_at),
    reason        text        NOT NULL,
    created_by    text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX overrides_by_department ON overrides (department_id, ends_at);

-- One row per department; every mutation of a department's queue locks it first.
CREATE TABLE queue_status (
    department_id   uuid        PRIMARY KEY REFERENCES departments (id) ON DELETE CASCADE,
    is_open         boolean     NOT NULL DEFAULT false,
    since           timestamptz NOT NULL,
    changed_by      text        NOT NULL,
    reason          text,
    message         text,
    closes_at       timestamptz,
    current_ticket  text,
    avg_service_s   double precision
);

CREATE TABLE queue_audit (
    id            bigserial   PRIMARY KEY,
    tenant_id     text        NOT NULL,
    department_id uuid        NOT NULL REFERENCES departments (id) ON DELETE CASCADE,
    at            timestamptz NOT NULL,
    actor         text        NOT NULL,
    action        text        NOT NULL,
    reason        text,
    before        jsonb,
    after         jsonb
);
CREATE INDEX queue_audit_by_department ON queue_audit (tenant_id, department_id, at DESC);
CREATE INDEX queue_audit_by_tenant ON queue_audit (tenant_id, at DESC);

CREATE TABLE ticket_counters (
    department_id uuid    NOT NULL REFERENCES departments (id) ON DELETE CASCADE,
    service_day   date    NOT NULL,
    last_number   integer NOT NULL,
    PRIMARY KEY (department_id, service_day)
);

CREATE TABLE tickets (
    id               uuid        PRIMARY KEY,
    tenant_id        text        NOT NULL,
    department_id    uuid        NOT NULL REFERENCES departments (id) ON DELETE CASCADE,
    service_day      date        NOT NULL,
    number           integer     NOT NULL,
    label            text        NOT NULL,
    chat_id          text        NOT NULL,
    phone            text,
    patient_name     text,
    language         text,
    state            text        NOT NULL CHECK (state IN ('waiting', 'called', 'served', 'no_show', 'cancelled',
                                                            'transferred')),
    joined_via       text        NOT NULL,
    issued_at        timestamptz NOT NULL,
    queued_at        timestamptz NOT NULL,  -- order in the queue; positions are counted from it
    called_at        timestamptz,
    finished_at      timestamptz,
    counter          text,
    recalls          integer     NOT NULL DEFAULT 0,
    almost_told_at   timestamptz,
    end_reason       text,
    transferred_to   uuid        REFERENCES tickets (id),
    UNIQUE (department_id, service_day, number)
);
-- One active ticket per patient per department, whatever the race.
CREATE UNIQUE INDEX tickets_one_active ON tickets (department_id, chat_id) WHERE state IN ('waiting', 'called');
CREATE INDEX tickets_waiting ON tickets (department_id, queued_at, id) WHERE state = 'waiting';
CREATE INDEX tickets_finished ON tickets (department_id, finished_at DESC) WHERE state = 'served';

-- Patients who asked to hear when a department opens; told once, at the next opening.
CREATE TABLE opening_subscriptions (
    department_id uuid        NOT NULL REFERENCES departments (id) ON DELETE CASCADE,
    chat_id       text        NOT NULL,
    phone         text,
    patient_name  text,
    language      text,
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (department_id, chat_id)
);
