-- Deployments: the request, the plan, every host's progress, every log line,
-- every HAProxy action. Times are Unix ms.
CREATE TABLE deployments (
    id               TEXT PRIMARY KEY,
    application      TEXT NOT NULL,
    environment      TEXT NOT NULL,
    team             TEXT NOT NULL,
    status           TEXT NOT NULL,
    requested_by     TEXT NOT NULL,
    idempotency_key  TEXT,
    request          TEXT NOT NULL,
    changeset_version TEXT,
    query            TEXT,
    haproxy_query    TEXT,
    haproxy_vms      TEXT,
    hosts_total      BIGINT NOT NULL DEFAULT 0,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    error            TEXT,
    -- "application/environment" while pending or running, NULL after: the
    -- unique index makes "one running deployment per app and env" atomic.
    active_key       TEXT
);
CREATE UNIQUE INDEX deployments_active ON deployments (active_key);
CREATE UNIQUE INDEX deployments_idempotency ON deployments (idempotency_key);
CREATE INDEX deployments_app_env ON deployments (application, environment, created_at);

CREATE TABLE deployment_hosts (
    deployment_id  TEXT NOT NULL,
    position       BIGINT NOT NULL,
    name           TEXT NOT NULL,
    address        TEXT NOT NULL,
    server_name    TEXT NOT NULL,
    status         TEXT NOT NULL,
    step           TEXT,
    job_id         TEXT,
    -- HAProxy state we are responsible for: 'in' (in rotation), 'out'
    -- (drained by us, must be restored), 'maint' (left in maint on failure).
    rotation       TEXT NOT NULL DEFAULT 'in',
    ok             BIGINT NOT NULL DEFAULT 0,
    changed        BIGINT NOT NULL DEFAULT 0,
    failed         BIGINT NOT NULL DEFAULT 0,
    unreachable    BIGINT NOT NULL DEFAULT 0,
    skipped        BIGINT NOT NULL DEFAULT 0,
    started_at     BIGINT,
    finished_at    BIGINT,
    error          TEXT,
    PRIMARY KEY (deployment_id, name)
);

CREATE TABLE deployment_logs (
    deployment_id TEXT NOT NULL,
    seq           BIGINT NOT NULL,
    ts            BIGINT NOT NULL,
    host          TEXT,
    kind          TEXT NOT NULL,
    data          TEXT NOT NULL,
    PRIMARY KEY (deployment_id, seq)
);

CREATE TABLE haproxy_actions (
    deployment_id TEXT NOT NULL,
    at            BIGINT NOT NULL,
    host          TEXT NOT NULL,
    haproxy_vm    TEXT NOT NULL,
    backend       TEXT NOT NULL,
    server        TEXT NOT NULL,
    action        TEXT NOT NULL,
    ok            BIGINT NOT NULL,
    detail        TEXT
);
CREATE INDEX haproxy_actions_deployment ON haproxy_actions (deployment_id, at);
