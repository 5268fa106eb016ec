//! Adapters for every port of `chatsys-core`: the real ones a deployment uses (MySQL, Redis, RabbitMQ,
//! OpenSearch) and the embedded ones of standalone mode (SQLite, in-process numbers and cache, tantivy).
//! Everything that opens a socket or a file is here; the runtime wires it.

pub mod amqp;
mod database_error;
pub mod embedded_search;
pub mod memory;
mod migrations;
pub mod mysql;
pub mod opensearch;
pub mod redis;
pub mod sql;
pub mod sqlite;
pub mod sqlite_keys;
pub mod sqlite_queue;
