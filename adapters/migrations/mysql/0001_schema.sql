-- Applications are written directly by the API; chats and messages only by the worker.
-- `inserted_by` names the batch that inserted a row, so a batch counts exactly the rows it added
-- even when another worker or a redelivery writes the same row concurrently.
CREATE TABLE applications (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    token VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    name VARCHAR(255) NOT NULL,
    chats_count BIGINT UNSIGNED NOT NULL DEFAULT 0,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY applications_token (token)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE chats (
    application_id BIGINT UNSIGNED NOT NULL,
    number BIGINT UNSIGNED NOT NULL,
    messages_count BIGINT UNSIGNED NOT NULL DEFAULT 0,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    inserted_by BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (application_id, number),
    KEY chats_inserted_by (inserted_by)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE messages (
    application_id BIGINT UNSIGNED NOT NULL,
    chat_number BIGINT UNSIGNED NOT NULL,
    number BIGINT UNSIGNED NOT NULL,
    body MEDIUMTEXT NOT NULL,
    version BIGINT UNSIGNED NOT NULL,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    inserted_by BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (application_id, chat_number, number),
    KEY messages_inserted_by (inserted_by)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
