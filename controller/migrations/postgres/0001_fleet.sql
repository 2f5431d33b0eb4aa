-- Fleet foundation: API tokens, enrollment tokens, agents, certificates.
-- Times are Unix milliseconds (BIGINT); equal in meaning to migrations/sqlite/0001_fleet.sql.
CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE enrollment_tokens (
    id          TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    expires_at  BIGINT NOT NULL,
    uses_left   BIGINT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE agents (
    name            TEXT PRIMARY KEY,
    cert_serial     TEXT NOT NULL,
    cert_fingerprint TEXT NOT NULL,
    cert_not_after  BIGINT NOT NULL,
    version         TEXT NOT NULL DEFAULT '',
    first_seen      BIGINT NOT NULL,
    last_seen       BIGINT,
    remote_addr     TEXT,
    facts           TEXT,
    revoked_at      BIGINT
);

CREATE TABLE certificates (
    serial      TEXT PRIMARY KEY,
    agent_name  TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    not_after   BIGINT NOT NULL,
    issued_at   BIGINT NOT NULL,
    revoked     BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX certificates_agent ON certificates (agent_name);
