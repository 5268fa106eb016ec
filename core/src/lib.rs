//! The chatsys core: domain types, the commands that travel through the queue, one trait per port
//! (store, numbers, queue, cache, search) with a real and an embedded adapter each, the service that
//! answers the API, and the ingest loop that the worker runs.

pub mod command;
pub mod domain;
pub mod envelope;
pub mod error;
pub mod group_commit;
pub mod idempotency;
pub mod index_queue;
pub mod ingest;
pub mod list_cache;
pub mod live;
pub mod message_creates;
pub mod pages;
pub mod plan;
pub mod ports;
pub mod quota;
pub mod reads;
pub mod reindex;
pub mod render;
pub mod search_text;
pub mod service;
pub mod telemetry;

pub use error::{CoreError, CoreResult};
