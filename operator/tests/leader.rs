//! Leader election against a mock API server: who takes, keeps and yields the Lease.

use chatsys_operator::leader::{LEASE_NAME, LeaderElection};
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use std::time::Duration;

const LEASE_URI: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";

type Calls = Vec<(Method, String, Value)>;

/// One attempt to take or renew the lease against a server holding `lease` (or none), answering every
/// write with `write_status`.
async fn attempt(lease: Option<Value>, write_status: StatusCode) -> (bool, Calls) {
    run(lease, write_status, false, None).await
}

/// An attempt made `waited` after a first look at `lease`, which did not change meanwhile (in
/// paused time).
async fn attempt_after(lease: Value, write_status: StatusCode, waited: Duration) -> (bool, Calls) {
    run(Some(lease), write_status, false, Some(waited)).await
}

/// A release against a server holding `lease`.
async fn release(lease: Option<Value>) -> Calls {
    run(lease, StatusCode::OK, true, None).await.1
}

async fn run(
    lease: Option<Value>,
    write_status: StatusCode,
    release: bool,
    waited: Option<Duration>,
) -> (bool, Calls) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let election = LeaderElection::new(
        Client::new(service, "default"),
        "ops",
        "operator-a".to_string(),
    );
    let server = tokio::spawn(async move {
        let mut calls = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().clone();
            let uri = request.uri().to_string();
            let bytes = request.into_body().collect_bytes().await.expect("body");
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("JSON")
            };
            let (status, response) = match (&method, &lease) {
                (&Method::GET, Some(lease)) => (StatusCode::OK, lease.clone()),
                (&Method::GET, None) => (
                    StatusCode::NOT_FOUND,
                    json!({ "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "reason": "NotFound", "code": 404 }),
                ),
                _ if write_status.is_success() => (write_status, body.clone()),
                _ => (
                    write_status,
                    json!({ "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "reason": "Conflict", "code": write_status.as_u16() }),
                ),
            };
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&response).expect("JSON")))
                    .expect("response"),
            );
            calls.push((method, uri, body));
        }
        calls
    });
    if let Some(waited) = waited {
        let first = election.try_acquire_or_renew().await.expect("a first look");
        assert!(
            !first,
            "a lease seen for the first time is never taken at once"
        );
        tokio::time::advance(waited).await;
    }
    let acquired = tokio::time::timeout(Duration::from_secs(1), async {
        if release {
            election.release().await.map(|()| true)
        } else {
            election.try_acquire_or_renew().await
        }
    })
    .await
    .expect("attempt finished within 1 s")
    .expect("attempt succeeded");
    drop(election);
    let calls = tokio::time::timeout(Duration::from_secs(1), server)
        .await
        .expect("mock finished")
        .expect("mock ran");
    (acquired, calls)
}

fn lease(holder: &str, renewed: Timestamp, transitions: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": { "name": LEASE_NAME, "namespace": "ops", "resourceVersion": "41" },
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "acquireTime": "2026-01-01T00:00:00.000000Z",
            "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            "leaseTransitions": transitions,
        },
    })
}

fn get() -> (Method, String) {
    (Method::GET, format!("{LEASE_URI}/{LEASE_NAME}"))
}

fn methods_and_uris(calls: &[(Method, String, Value)]) -> Vec<(Method, String)> {
    calls
        .iter()
        .map(|(m, u, _)| (m.clone(), u.clone()))
        .collect()
}

#[tokio::test]
async fn a_missing_lease_is_created_with_this_replica_as_holder() {
    let (acquired, calls) = attempt(None, StatusCode::CREATED).await;
    assert!(acquired);
    assert_eq!(
        methods_and_uris(&calls),
        [get(), (Method::POST, format!("{LEASE_URI}?"))]
    );
    let spec = &calls[1].2["spec"];
    assert_eq!(spec["holderIdentity"], "operator-a");
    assert_eq!(spec["leaseDurationSeconds"], 15);
    assert_eq!(spec["leaseTransitions"], 0);
}

#[tokio::test]
async fn a_lease_another_replica_renewed_recently_is_left_alone() {
    let (acquired, calls) = attempt(
        Some(lease("operator-b", Timestamp::now(), 3)),
        StatusCode::OK,
    )
    .await;
    assert!(!acquired);
    assert_eq!(methods_and_uris(&calls), [get()], "no write");
}

#[tokio::test(start_paused = true)]
async fn a_lease_unchanged_for_its_duration_is_taken_over_with_a_compare_and_swap() {
    let (acquired, calls) = attempt_after(
        lease("operator-b", Timestamp::now(), 3),
        StatusCode::OK,
        Duration::from_secs(15),
    )
    .await;
    assert!(acquired);
    assert_eq!(
        methods_and_uris(&calls),
        [
            get(),
            get(),
            (Method::PUT, format!("{LEASE_URI}/{LEASE_NAME}?"))
        ]
    );
    let body = &calls[2].2;
    assert_eq!(
        body["metadata"]["resourceVersion"], "41",
        "the write fails if someone else wrote first"
    );
    assert_eq!(body["spec"]["holderIdentity"], "operator-a");
    assert_eq!(body["spec"]["leaseTransitions"], 4);
    assert_ne!(body["spec"]["acquireTime"], "2026-01-01T00:00:00.000000Z");
}

#[tokio::test]
async fn the_holder_renews_keeping_its_acquire_time() {
    let (acquired, calls) = attempt(
        Some(lease("operator-a", Timestamp::now(), 2)),
        StatusCode::OK,
    )
    .await;
    assert!(acquired);
    let body = &calls[1].2;
    assert_eq!(calls[1].0, Method::PUT);
    assert_eq!(body["spec"]["leaseTransitions"], 2);
    assert_eq!(body["spec"]["acquireTime"], "2026-01-01T00:00:00.000000Z");
}

#[tokio::test(start_paused = true)]
async fn losing_the_race_for_an_expired_lease_is_not_leading() {
    let (acquired, calls) = attempt_after(
        lease("operator-b", Timestamp::now(), 3),
        StatusCode::CONFLICT,
        Duration::from_secs(16),
    )
    .await;
    assert!(!acquired);
    assert_eq!(calls.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_candidate_whose_clock_runs_ahead_still_waits_a_full_lease_duration() {
    // The holder renewed just now, by a clock 20 s behind this candidate's: its renewTime looks
    // older than the lease duration. Judged by the record's time, the lease would be taken while
    // its holder still reconciles.
    let skewed = Timestamp::now() - SignedDuration::from_secs(20);
    let (acquired, calls) = attempt_after(
        lease("operator-b", skewed, 3),
        StatusCode::OK,
        Duration::from_secs(10),
    )
    .await;
    assert!(
        !acquired,
        "10 s after seeing the record, on this candidate's own clock"
    );
    assert_eq!(methods_and_uris(&calls), [get(), get()], "no write");
    let (acquired, _) = attempt_after(
        lease("operator-b", skewed, 3),
        StatusCode::OK,
        Duration::from_secs(15),
    )
    .await;
    assert!(acquired, "a full lease duration later");
}

#[tokio::test]
async fn a_released_lease_is_taken_at_once() {
    let mut released = lease("operator-b", Timestamp::now(), 3);
    released["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("holderIdentity");
    let (acquired, calls) = attempt(Some(released), StatusCode::OK).await;
    assert!(acquired);
    assert_eq!(calls[1].2["spec"]["holderIdentity"], "operator-a");
    assert_eq!(calls[1].2["spec"]["leaseTransitions"], 4);
}

#[tokio::test]
async fn releasing_clears_the_holder_of_its_own_lease_only() {
    let calls = release(Some(lease("operator-a", Timestamp::now(), 2))).await;
    assert_eq!(
        methods_and_uris(&calls),
        [get(), (Method::PUT, format!("{LEASE_URI}/{LEASE_NAME}?"))]
    );
    assert_eq!(calls[1].2["spec"]["holderIdentity"], Value::Null);
    assert_eq!(calls[1].2["metadata"]["resourceVersion"], "41");
    let calls = release(Some(lease("operator-b", Timestamp::now(), 2))).await;
    assert_eq!(
        methods_and_uris(&calls),
        [get()],
        "another replica's lease is not touched"
    );
}

#[tokio::test(start_paused = true)]
async fn a_renewal_the_api_server_never_answers_ends_the_leadership_before_the_lease_runs_out() {
    use chatsys_operator::leader::{CALL_DEADLINE, RENEW_DEADLINE};
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let election = LeaderElection::new(
        Client::new(service, "default"),
        "ops",
        "operator-a".to_string(),
    );
    // Takes every request and never answers, as a server behind a dead connection would.
    let hung = tokio::spawn(async move {
        let mut unanswered = Vec::new();
        while let Some(pending) = handle.next_request().await {
            unanswered.push(pending);
        }
    });
    let started = tokio::time::Instant::now();
    let lease_duration = Duration::from_secs(15);
    let error = tokio::time::timeout(lease_duration, election.keep())
        .await
        .expect("the holder stops before its lease runs out");
    assert_eq!(error.metric_label(), "leader_election");
    assert!(
        started.elapsed() <= RENEW_DEADLINE,
        "{:?} (calls are cut off at {CALL_DEADLINE:?})",
        started.elapsed()
    );
    hung.abort();
}

#[tokio::test(start_paused = true)]
async fn renewals_that_fail_slowly_end_the_leadership_by_the_renew_deadline() {
    use chatsys_operator::leader::RENEW_DEADLINE;
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let election = LeaderElection::new(
        Client::new(service, "default"),
        "ops",
        "operator-a".to_string(),
    );
    // Every call fails after 2.9 s: each just inside the call deadline, so only the renew
    // deadline itself can stop the holder in time.
    let slow = tokio::spawn(async move {
        while let Some((_, send)) = handle.next_request().await {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(2900)).await;
                send.send_response(
                    Response::builder()
                        .status(StatusCode::INTERNAL_SERVER_ERROR)
                        .body(Body::from(serde_json::to_vec(&json!({ "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "reason": "InternalError", "code": 500 })).expect("JSON")))
                        .expect("response"),
                );
            });
        }
    });
    let started = tokio::time::Instant::now();
    let error = election.keep().await;
    assert_eq!(error.metric_label(), "leader_election");
    assert!(
        started.elapsed() <= RENEW_DEADLINE,
        "stopped {:?} after the last renewal, past the renew deadline",
        started.elapsed()
    );
    slow.abort();
}
