-- Idempotency key records of standalone mode (a deployment keeps them in Redis): one row a key, in
-- its scope, removed once past its lifetime.
CREATE TABLE idempotency_keys (
    cell TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
