//! chatsys-runtime: what every chatsys process shares, so that each binary is its own job and a few lines
//! of `main`. The API adds its routes, the worker its consumer loop; both start here:
//! - [`wiring`]: the ports of a deployment (MySQL, Redis, RabbitMQ, OpenSearch) and of standalone mode
//!   (SQLite, in-process numbers and cache, tantivy), the ingest loop of standalone, the counts repair;
//! - [`startup`]: listening at once and waiting for each backing service, saying so on `/readyz`;
//! - [`server`]: the HTTP/1.1 server loop with its connection limits;
//! - [`ops`]: liveness, readiness and metrics answers;
//! - [`lifecycle`]: a started process and how it stops.

pub mod boot;
pub mod health;
pub mod lifecycle;
pub mod ops;
pub mod server;
pub mod startup;
pub mod telemetry;
pub mod wiring;

pub use lifecycle::{Running, bind, spawn_server, terminated};
