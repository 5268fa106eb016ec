//! Shared code of the `bench` and `faults` binaries: they drive chatsys as a black box over HTTP, start its
//! processes on fresh resources, and talk to MariaDB, Redis and RabbitMQ directly for the raw limits and checks.

pub mod client;
pub mod cpu;
pub mod events;
pub mod isolation;
pub mod ledger;
pub mod load;
pub mod raw;
pub mod services;
pub mod stats;
pub mod system;
