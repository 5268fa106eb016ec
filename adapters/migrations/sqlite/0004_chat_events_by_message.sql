-- A catch-up sends each message once, at its latest change: finding a message's later changes (and its
-- creation) is a lookup in this index, not a scan of the chat's log.
CREATE INDEX chat_events_by_message ON chat_events (application_id, chat_number, message_number, seq);
