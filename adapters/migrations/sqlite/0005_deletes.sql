-- Deletes: tombstone rows (see the MySQL migration of the same name).
ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN deleted_by INTEGER NOT NULL DEFAULT 0;
CREATE INDEX messages_deleted_by ON messages (deleted_by);

ALTER TABLE chats ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE chats ADD COLUMN deleted_by INTEGER NOT NULL DEFAULT 0;
CREATE INDEX chats_deleted_by ON chats (deleted_by);

ALTER TABLE applications ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
