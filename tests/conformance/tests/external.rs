//! The conformance suite against a deployed system: `CHATSYS_BASE_URL` (and `CHATSYS_ADMIN_KEY`).

chatsys_conformance::conformance_suite!(
    setup => chatsys_conformance::Target::from_env(),
    attrs => [#[ignore = "needs CHATSYS_BASE_URL: run by tests/e2e/run.sh against a deployed system"]],
);
