-- Live streams: every chat numbers its changes in the order they were committed (see the MySQL
-- migration of the same number).
ALTER TABLE messages ADD COLUMN changed_by INTEGER NOT NULL DEFAULT 0;
DROP INDEX messages_inserted_by;
CREATE INDEX messages_changed_by ON messages (changed_by);

ALTER TABLE chats ADD COLUMN last_event INTEGER NOT NULL DEFAULT 0;
ALTER TABLE chats ADD COLUMN changed_by INTEGER NOT NULL DEFAULT 0;
CREATE INDEX chats_changed_by ON chats (changed_by);

CREATE TABLE chat_events (
    application_id INTEGER NOT NULL,
    chat_number INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    message_number INTEGER NOT NULL,
    created INTEGER NOT NULL,
    PRIMARY KEY (application_id, chat_number, seq)
) WITHOUT ROWID;
