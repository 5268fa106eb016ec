//! The conformance suite against the standalone server (embedded storage, queue, cache and search).

chatsys_conformance::conformance_suite!(setup => chatsys_conformance::harness::standalone().await);
