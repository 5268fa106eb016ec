//! The conformance suite against the API and the worker on MariaDB, Redis and RabbitMQ, with the
//! embedded search engine (no OpenSearch runs here).

chatsys_conformance::conformance_suite!(setup => chatsys_conformance::harness::full_stack().await);
