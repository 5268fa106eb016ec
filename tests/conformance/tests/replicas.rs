//! Two API replicas on the same backing services, as a deployment runs them: a create accepted by one
//! under an idempotency key is answered from its record by the other, a token replaced through one
//! stops working on the other within its cache lifetime, and a create whose replica died between
//! publishing and answering is finished once by a retry on the other.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chatsys_api::http::render::ApiRender;
use chatsys_conformance::harness::full_stack_replicas;
use chatsys_conformance::messages::{messages_count_eventually, messages_eventually};
use chatsys_conformance::{
    CATCH_UP, Target, application_path, eventually, message_path, messages_path, number_of,
    numbers_of,
};
use chatsys_core::CoreResult;
use chatsys_core::command::Command;
use chatsys_core::idempotency::IdempotencyKey;
use chatsys_core::ports::Queue;
use chatsys_core::reads::TOKEN_RECHECK;
use chatsys_core::service::ChatService;
use chatsys_runtime::startup::Connecting;
use chatsys_runtime::wiring;
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_on_another_replica_gets_the_first_answer() {
    let served = full_stack_replicas(2).await;
    let (first, second) = (&served.target, &served.replicas[0]);
    let token = first.create_token().await;
    let chat = first.create_chat(&token).await;
    let body = json!({ "body": "accepted by one, retried on the other" });
    let answered = first
        .post_with_key(&messages_path(&token, chat), "across-replicas", &body)
        .await;
    answered.expect_status(201);
    let retried = second
        .post_with_key(&messages_path(&token, chat), "across-replicas", &body)
        .await;
    retried.expect_status(201);
    assert_eq!(retried.json(), answered.json(), "{}", retried.describe());
    assert_eq!(retried.header("idempotent-replayed"), Some("true"));
    assert_eq!(second.create_message(&token, chat, "next").await, 2);
}

/// Numbers are taken in group commits (one Redis script call for every create waiting): 500 creates
/// into one chat, at once and spread over two replicas, still get exactly 1..=500, each stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_over_two_replicas_get_every_number_once() {
    const MESSAGES: u64 = 500;
    let served = full_stack_replicas(2).await;
    let replicas = [&served.target, &served.replicas[0]];
    let token = replicas[0].create_token().await;
    let chat = replicas[0].create_chat(&token).await;
    let created = futures::future::join_all((0..MESSAGES).map(|index| {
        let (token, replica) = (&token, replicas[index as usize % 2]);
        async move {
            replica
                .create_message(token, chat, &format!("m{index}"))
                .await
        }
    }))
    .await;
    let mut numbers = created;
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=MESSAGES).collect::<Vec<_>>());
    let listed = messages_eventually(replicas[1], &token, chat, "all stored", |messages| {
        messages.len() as u64 >= MESSAGES
    })
    .await;
    assert_eq!(numbers_of(&listed), (1..=MESSAGES).collect::<Vec<_>>());
    messages_count_eventually(replicas[0], &token, chat, MESSAGES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_replaced_through_one_replica_stops_working_on_the_other() {
    let served = full_stack_replicas(2).await;
    let (first, second) = (&served.target, &served.replicas[0]);
    let token = first.create_token().await;
    // The other replica has resolved the token: it holds it in process, and Redis holds it too.
    second
        .get(&application_path(&token))
        .await
        .expect_status(200);
    let rotated = first.rotate_token(&token).await;
    rotated.expect_status(200);
    let replaced_at = Instant::now();
    let within = TOKEN_RECHECK + Duration::from_secs(1);
    eventually(within, || async {
        let status = second.get(&application_path(&token)).await.status;
        if status == 404 {
            Ok(())
        } else {
            Err(format!(
                "the replaced token answers {status} on the other replica"
            ))
        }
    })
    .await;
    println!(
        "the other replica refused the replaced token after {:?}",
        replaced_at.elapsed()
    );
    let new = chatsys_conformance::token_of(&rotated.json());
    second.get(&application_path(&new)).await.expect_status(200);
}

/// A queue that publishes and then never returns: the request that publishes through it is cut off
/// between publishing and answering, as when its process dies there.
struct PublishThenDie {
    queue: Arc<dyn Queue>,
}

#[async_trait]
impl Queue for PublishThenDie {
    async fn ping(&self) -> CoreResult<()> {
        self.queue.ping().await
    }
    async fn publish(&self, command: &Command) -> CoreResult<()> {
        self.queue.publish(command).await?;
        std::future::pending().await
    }
    async fn backlog(&self) -> CoreResult<u64> {
        self.queue.backlog().await
    }
    async fn queued_commands_at_most(&self) -> CoreResult<u64> {
        self.queue.queued_commands_at_most().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_cut_off_after_publishing_is_finished_once_by_a_retry_on_another_replica() {
    let served = full_stack_replicas(1).await;
    let survivor: &Target = &served.target;
    let token = survivor.create_token().await;
    let chat = survivor.create_chat(&token).await;
    survivor.create_message(&token, chat, "before").await;

    // A replica built from the same settings and ports, whose create is cut off after publishing.
    let args = served
        .serve_args
        .as_ref()
        .expect("the full stack's settings");
    let mut ports = wiring::serve_ports(args, &Connecting::new(&["database", "redis", "search"]))
        .await
        .expect("the replica's ports");
    ports.queue = Arc::new(PublishThenDie { queue: ports.queue });
    let dying = ChatService::new(ports, Arc::new(ApiRender));
    let key = IdempotencyKey::parse(b"cut-off-after-publishing").unwrap();
    let cut_off = tokio::time::timeout(
        Duration::from_secs(5),
        dying.create_message(&token, chat, "said once", Some(&key)),
    )
    .await;
    assert!(
        cut_off.is_err(),
        "the create was meant to be cut off: {cut_off:?}"
    );
    drop(dying);

    // The client retries with its key, after Retry-After whenever the key is still held.
    let started = Instant::now();
    let retried = loop {
        let reply = survivor
            .post_with_key(
                &messages_path(&token, chat),
                "cut-off-after-publishing",
                &json!({ "body": "said once" }),
            )
            .await;
        if reply.status != 409 || started.elapsed() > Duration::from_secs(30) {
            break reply;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    retried.expect_status(201);
    assert_eq!(retried.header("idempotent-replayed"), Some("true"));
    // The number the cut-off attempt took, right after the message created before it.
    assert_eq!(number_of(&retried.json()), 2, "{}", retried.describe());
    eventually(CATCH_UP, || async {
        let messages = survivor.get(&messages_path(&token, chat)).await.items();
        let bodies: Vec<&str> = messages.iter().filter_map(|m| m["body"].as_str()).collect();
        if bodies == ["before", "said once"] {
            Ok(())
        } else {
            Err(format!("stored {bodies:?}"))
        }
    })
    .await;
    assert_eq!(survivor.create_message(&token, chat, "after").await, 3);
}

/// Clients on both replicas edit one message, each conditioned on the version they read: exactly one
/// edit per round is accepted, the others answer 412 with the winner's tag, and the message ends with
/// the accepted body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_edits_from_two_replicas_accept_one_per_version() {
    let served = full_stack_replicas(2).await;
    let replicas = [&served.target, &served.replicas[0]];
    let token = replicas[0].create_token().await;
    let chat = replicas[0].create_chat(&token).await;
    replicas[0].create_message(&token, chat, "original").await;
    let path = message_path(&token, chat, 1);
    for round in 0..5 {
        let read = replicas[round % 2].get(&path).await;
        read.expect_status(200);
        let tag = read.header("etag").expect("a tag").to_string();
        let edits = (0..6).map(|client| {
            let (replica, tag, path) = (replicas[client % 2], tag.clone(), path.clone());
            async move {
                let body = format!("round {round}, client {client}");
                let reply = replica
                    .send(
                        replica
                            .request(Method::PUT, &path)
                            .header("If-Match", tag)
                            .json(&json!({ "body": body })),
                    )
                    .await;
                (body, reply)
            }
        });
        let replies = futures::future::join_all(edits).await;
        let accepted: Vec<&(String, chatsys_conformance::Reply)> = replies
            .iter()
            .filter(|(_, reply)| reply.status == 200)
            .collect();
        assert_eq!(
            accepted.len(),
            1,
            "round {round}: {} accepted",
            accepted.len()
        );
        let (winner, won) = accepted[0];
        let winner_tag = won.header("etag").expect("a tag");
        for (_, reply) in replies.iter().filter(|(_, reply)| reply.status != 200) {
            reply.expect_error(412, "precondition_failed");
            assert_eq!(reply.header("etag"), Some(winner_tag));
        }
        for replica in replicas {
            let now = replica.get(&path).await;
            assert_eq!(now.json()["body"], winner.as_str(), "{}", now.describe());
        }
    }
}

/// A delete on one replica and edits on both, sent together, round after round: the delete is
/// accepted; each edit answers 200 (accepted before it, and overwritten by it) or 404 (after it); the
/// message answers 404 on both replicas at once, and once stored the chat lists none and counts none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_racing_edits_on_two_replicas_ends_deleted() {
    let served = full_stack_replicas(2).await;
    let replicas = [&served.target, &served.replicas[0]];
    let token = replicas[0].create_token().await;
    let chat = replicas[0].create_chat(&token).await;
    for round in 1..=5u64 {
        replicas[0].create_message(&token, chat, "doomed").await;
        let path = message_path(&token, chat, round);
        let edits = (0..4).map(|client| {
            let (replica, path) = (replicas[client % 2], path.clone());
            async move {
                replica
                    .put(&path, &json!({ "body": format!("edit {client}") }))
                    .await
                    .status
            }
        });
        let deleting = replicas[round as usize % 2].delete(&path);
        let (edited, deleted) =
            futures::future::join(futures::future::join_all(edits), deleting).await;
        deleted.expect_status(202);
        assert!(
            edited.iter().all(|status| *status == 200 || *status == 404),
            "round {round}: {edited:?}"
        );
        for replica in replicas {
            replica.get(&path).await.expect_error(404, "not_found");
        }
    }
    let listed = messages_path(&token, chat);
    let counted = chatsys_conformance::chat_path(&token, chat);
    eventually(CATCH_UP, || async {
        let list = replicas[1].get(&listed).await.items();
        let count = replicas[0].get(&counted).await.json()["messages_count"].as_u64();
        if list.is_empty() && count == Some(0) {
            Ok(())
        } else {
            Err(format!("{list:?}, count {count:?}"))
        }
    })
    .await;
}
