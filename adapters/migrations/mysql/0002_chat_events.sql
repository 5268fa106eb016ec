-- Live streams: every chat numbers its changes (a message stored for the first time, or a newer version
-- of it) in the order they were committed, and keeps the log of them for clients that resume.
-- `changed_by` names the batch that last changed a message row (as `inserted_by` names the one that
-- inserted it), so a batch finds exactly the rows it changed; it replaces `inserted_by`'s index, since
-- every row a batch inserts it also changed.
ALTER TABLE messages
    ADD COLUMN changed_by BIGINT UNSIGNED NOT NULL DEFAULT 0,
    ADD KEY messages_changed_by (changed_by),
    DROP KEY messages_inserted_by;

-- A chat's last change, and the batch that last raised it (so a batch finds the chats it changed).
ALTER TABLE chats
    ADD COLUMN last_event BIGINT UNSIGNED NOT NULL DEFAULT 0,
    ADD COLUMN changed_by BIGINT UNSIGNED NOT NULL DEFAULT 0,
    ADD KEY chats_changed_by (changed_by);

CREATE TABLE chat_events (
    application_id BIGINT UNSIGNED NOT NULL,
    chat_number BIGINT UNSIGNED NOT NULL,
    seq BIGINT UNSIGNED NOT NULL,
    message_number BIGINT UNSIGNED NOT NULL,
    created TINYINT NOT NULL,
    PRIMARY KEY (application_id, chat_number, seq)
) ENGINE = InnoDB;
