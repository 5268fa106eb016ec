-- The embedded store of standalone mode: the same tables as MySQL (times as microseconds since the
-- epoch), plus the durable command queue and its dead letters in the same database file.
CREATE TABLE applications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    chats_count INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE chats (
    application_id INTEGER NOT NULL,
    number INTEGER NOT NULL,
    messages_count INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    inserted_by INTEGER NOT NULL,
    PRIMARY KEY (application_id, number)
) WITHOUT ROWID;
CREATE INDEX chats_inserted_by ON chats (inserted_by);

CREATE TABLE messages (
    application_id INTEGER NOT NULL,
    chat_number INTEGER NOT NULL,
    number INTEGER NOT NULL,
    body TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    inserted_by INTEGER NOT NULL,
    PRIMARY KEY (application_id, chat_number, number)
) WITHOUT ROWID;
CREATE INDEX messages_inserted_by ON messages (inserted_by);

CREATE TABLE command_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    payload BLOB NOT NULL,
    -- What a queued command allocated, so lost counters restart above it.
    application_id INTEGER NOT NULL,
    chat_number INTEGER NOT NULL,
    message_number INTEGER NOT NULL
);

CREATE TABLE dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    payload BLOB NOT NULL,
    reason TEXT NOT NULL,
    failed_at INTEGER NOT NULL
);
