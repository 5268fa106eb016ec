-- Deletes. A deleted message or chat stays as a tombstone row: its number is never handed out again,
-- an edit or a create applied after the delete (a redelivery, a slower queue) changes nothing, and the
-- row says the delete happened. `deleted_by` names the batch that turned a live row into a tombstone,
-- so that batch alone lowers the counts, whatever another worker or a redelivery does meanwhile.
ALTER TABLE messages
    ADD COLUMN deleted TINYINT(1) NOT NULL DEFAULT 0,
    ADD COLUMN deleted_by BIGINT UNSIGNED NOT NULL DEFAULT 0,
    ADD KEY messages_deleted_by (deleted_by);

ALTER TABLE chats
    ADD COLUMN deleted TINYINT(1) NOT NULL DEFAULT 0,
    ADD COLUMN deleted_by BIGINT UNSIGNED NOT NULL DEFAULT 0,
    ADD KEY chats_deleted_by (deleted_by);

-- A deleted application keeps its row until the worker has removed everything in it.
ALTER TABLE applications
    ADD COLUMN deleted TINYINT(1) NOT NULL DEFAULT 0;
