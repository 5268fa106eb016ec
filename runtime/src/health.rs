//! What `/readyz` says, for the API, standalone and the worker alike: one state per check, and the
//! overall verdict. The reasons (addresses, user names, backend messages) go to the logs, never into the
//! answer, which anyone who can reach the port may read.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use chatsys_core::error::CoreResult;
use chatsys_core::ingest::IngestHealth;

/// One check's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckState {
    Ok,
    /// The process is still connecting to it at start, retrying with a growing delay: not ready.
    Waiting,
    /// The process cannot serve what depends on it: not ready.
    Unavailable,
    /// It works but lags (stored messages not yet searchable): still ready, and said.
    Behind,
}

/// The overall verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadinessStatus {
    /// Every check is `ok`.
    Ready,
    /// Ready, but a check is `behind`.
    Degraded,
    /// A check is `unavailable`: not ready.
    Unavailable,
}

/// The body of `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub status: ReadinessStatus,
    /// Each check by name (`database`, `redis`, `queue`, `search`, `ingest`, as the process has them).
    pub checks: BTreeMap<&'static str, CheckState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub state: CheckState,
}

impl Check {
    /// A backing service's ping: its failure is logged with its reason.
    pub fn ping(name: &'static str, result: CoreResult<()>) -> Check {
        let state = match result {
            Ok(()) => CheckState::Ok,
            Err(e) => {
                tracing::warn!(check = name, error = %e, "readiness check failed");
                CheckState::Unavailable
            }
        };
        Check { name, state }
    }

    /// The ingest loop's own checks: storing batches (`ingest`) and indexing them (`search`).
    pub fn ingest(health: &IngestHealth) -> [Check; 2] {
        let state = |problem: &Option<String>, failed| match problem {
            None => CheckState::Ok,
            Some(_) => failed,
        };
        [
            Check {
                name: "ingest",
                state: state(&health.last_error, CheckState::Unavailable),
            },
            Check {
                name: "search",
                state: state(&health.search_error, CheckState::Behind),
            },
        ]
    }
}

/// Whether the process is ready, and the body of `/readyz`: `status` is `ready`, `degraded` (ready, but
/// something lags) or `unavailable`; `checks` maps each check to `ok`, `behind` or `unavailable`. A
/// check named twice keeps its worst state.
pub fn report(checks: &[Check]) -> (bool, Value) {
    let mut states: BTreeMap<&'static str, CheckState> = BTreeMap::new();
    let mut worst = CheckState::Ok;
    for check in checks {
        let previous = states.get(check.name);
        if previous.is_some_and(|p| *p != CheckState::Ok) && check.state == CheckState::Ok {
            continue;
        }
        states.insert(check.name, check.state);
        worst = match (worst, check.state) {
            (CheckState::Unavailable | CheckState::Waiting, _)
            | (_, CheckState::Unavailable | CheckState::Waiting) => CheckState::Unavailable,
            (CheckState::Behind, _) | (_, CheckState::Behind) => CheckState::Behind,
            _ => CheckState::Ok,
        };
    }
    let status = match worst {
        CheckState::Ok => ReadinessStatus::Ready,
        CheckState::Behind => ReadinessStatus::Degraded,
        CheckState::Unavailable | CheckState::Waiting => ReadinessStatus::Unavailable,
    };
    let body = Readiness {
        status,
        checks: states,
    };
    let ready = worst != CheckState::Unavailable;
    (
        ready,
        serde_json::to_value(body).expect("a readiness report serialises"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatsys_core::error::{Backend, CoreError};
    use serde_json::json;

    #[test]
    fn a_failed_ping_is_unavailable_without_its_reason() {
        let failed = Check::ping(
            "database",
            Err(CoreError::unavailable(
                Backend::Database,
                "Access denied for user 'chat'@'10.1.2.3'",
            )),
        );
        let (ready, body) = report(&[Check::ping("redis", Ok(())), failed]);
        assert!(!ready);
        assert_eq!(
            body,
            json!({"status": "unavailable", "checks": {"redis": "ok", "database": "unavailable"}})
        );
    }

    #[test]
    fn search_behind_is_degraded_but_ready() {
        let health = IngestHealth {
            last_error: None,
            search_error: Some("Too many open files".into()),
        };
        let mut checks = vec![Check::ping("search", Ok(()))];
        checks.extend(Check::ingest(&health));
        let (ready, body) = report(&checks);
        assert!(ready);
        assert_eq!(
            body,
            json!({"status": "degraded", "checks": {"search": "behind", "ingest": "ok"}})
        );
    }
}
