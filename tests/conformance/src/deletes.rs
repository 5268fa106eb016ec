//! `DELETE …/messages/{number}`, `DELETE …/chats/{number}` and `DELETE /applications/{token}`: queued
//! like every write, answered 202, read-your-writes 404 at once, numbers never reused, and counts,
//! lists, search and streams forgetting what was deleted once the worker has stored it.

use std::time::Duration;

use reqwest::Method;
use reqwest::header::AUTHORIZATION;
use serde_json::json;

use crate::events::{EventStream, events_path};
use crate::target::{
    CATCH_UP, Target, application_path, chat_path, chats_path, encode, eventually, message_path,
    messages_path, numbers_of, search_path,
};

/// Waits until a chat's stored count is `count`.
async fn count_becomes(target: &Target, token: &str, chat: u64, count: u64) {
    let path = chat_path(token, chat);
    eventually(CATCH_UP, || async {
        let reply = target.get(&path).await;
        match reply.json()["messages_count"].as_u64() {
            Some(n) if n == count => Ok(()),
            _ => Err(format!("{path}: {}", reply.describe())),
        }
    })
    .await
}

/// Waits until a list or a search answers exactly these numbers, in this order.
async fn shows(target: &Target, path: &str, expected: &[u64]) {
    eventually(CATCH_UP, || async {
        let reply = target.get(path).await;
        reply.expect_status(200);
        let numbers = numbers_of(&reply.items());
        if numbers == expected {
            Ok(())
        } else {
            Err(format!("{path} shows {numbers:?}, want {expected:?}"))
        }
    })
    .await
}

/// A deleted message answers 404 at once (read, edit, delete again); the chat's list, count and search
/// forget it once stored; its number is never used again.
pub async fn a_deleted_message_is_gone_at_once_and_forgotten_once_stored(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    for body in ["heron one", "heron two", "heron three"] {
        target.create_message(&token, chat, body).await;
    }
    count_becomes(target, &token, chat, 3).await;
    shows(target, &search_path(&token, chat, "heron"), &[3, 2, 1]).await;

    let path = message_path(&token, chat, 2);
    let deleted = target.delete(&path).await;
    deleted.expect_status(202);
    target.get(&path).await.expect_error(404, "not_found");
    target
        .put(&path, &json!({ "body": "too late" }))
        .await
        .expect_error(404, "not_found");
    target.delete(&path).await.expect_error(404, "not_found");

    shows(target, &messages_path(&token, chat), &[1, 3]).await;
    count_becomes(target, &token, chat, 2).await;
    shows(target, &search_path(&token, chat, "heron"), &[3, 1]).await;
    assert_eq!(
        target.create_message(&token, chat, "heron four").await,
        4,
        "a deleted message's number is not used again"
    );
    target.get(&path).await.expect_error(404, "not_found");
}

/// `If-Match` on a delete: an old version is 412 and deletes nothing; the current one deletes.
pub async fn a_delete_conditioned_on_an_old_etag_is_412(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    target.create_message(&token, chat, "kept").await;
    let path = message_path(&token, chat, 1);
    let old = target.get(&path).await.header("etag").unwrap().to_string();
    let edited = target.put(&path, &json!({ "body": "edited" })).await;
    edited.expect_status(200);
    let current = edited.header("etag").unwrap().to_string();
    let stale = target
        .send(
            target
                .request(Method::DELETE, &path)
                .header("If-Match", &old),
        )
        .await;
    stale.expect_error(412, "precondition_failed");
    assert_eq!(stale.header("etag"), Some(current.as_str()));
    target.get(&path).await.expect_status(200);
    target
        .send(
            target
                .request(Method::DELETE, &path)
                .header("If-Match", &current),
        )
        .await
        .expect_status(202);
    target.get(&path).await.expect_error(404, "not_found");
}

/// Edits and deletes of one message sent together: whichever is accepted first, the message ends
/// deleted, in the store (list, count) as in reads. An edit accepted before the delete answers 200, one
/// after it 404; the delete answers 202 (or 404 if another delete came first).
pub async fn a_delete_racing_edits_ends_deleted(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    for round in 1..=4u64 {
        target
            .create_message(&token, chat, &format!("round {round}"))
            .await;
        let path = message_path(&token, chat, round);
        let edits = (0..3).map(|client| {
            let path = path.clone();
            async move {
                target
                    .put(&path, &json!({ "body": format!("edit {client}") }))
                    .await
                    .status
            }
        });
        let deletes = (0..2).map(|_| {
            let path = path.clone();
            async move { target.delete(&path).await.status }
        });
        let (edited, deleted) = futures::future::join(
            futures::future::join_all(edits),
            futures::future::join_all(deletes),
        )
        .await;
        assert!(
            edited.iter().all(|s| *s == 200 || *s == 404),
            "edits: {edited:?}"
        );
        assert_eq!(
            deleted.iter().filter(|s| **s == 202).count(),
            1,
            "one delete is accepted, the other finds it gone: {deleted:?}"
        );
        assert!(deleted.iter().all(|s| *s == 202 || *s == 404));
        target.get(&path).await.expect_error(404, "not_found");
    }
    shows(target, &messages_path(&token, chat), &[]).await;
    count_becomes(target, &token, chat, 0).await;
}

/// A deleted chat answers 404 at once, with its messages; the application's count and list of chats,
/// and search across the application, forget it once stored; its number is never used again.
pub async fn a_deleted_chat_goes_with_its_messages(target: &Target) {
    let token = target.create_token().await;
    let kept = target.create_chat(&token).await;
    let gone = target.create_chat(&token).await;
    target.create_message(&token, kept, "osprey kept").await;
    target.create_message(&token, gone, "osprey gone").await;
    target.create_message(&token, gone, "osprey gone too").await;
    count_becomes(target, &token, gone, 2).await;
    let across = format!(
        "/applications/{token}/messages/search?q={}",
        encode("osprey")
    );
    shows(target, &across, &[2, 1, 1]).await;

    target
        .delete(&chat_path(&token, gone))
        .await
        .expect_status(202);
    target
        .get(&chat_path(&token, gone))
        .await
        .expect_error(404, "not_found");
    target
        .get(&message_path(&token, gone, 1))
        .await
        .expect_error(404, "not_found");
    target
        .get(&messages_path(&token, gone))
        .await
        .expect_error(404, "not_found");
    target
        .post(
            &messages_path(&token, gone),
            &json!({ "body": "into the void" }),
        )
        .await
        .expect_error(404, "not_found");
    target
        .delete(&chat_path(&token, gone))
        .await
        .expect_error(404, "not_found");

    shows(target, &chats_path(&token), &[kept]).await;
    eventually(CATCH_UP, || async {
        let app = target.get(&application_path(&token)).await;
        match app.json()["chats_count"].as_u64() {
            Some(1) => Ok(()),
            _ => Err(app.describe()),
        }
    })
    .await;
    shows(target, &across, &[1]).await;
    assert_eq!(
        target.create_chat(&token).await,
        gone + 1,
        "a deleted chat's number is not used again"
    );
}

/// The stream says `message.deleted` (the number and when) and, once the chat is deleted,
/// `chat.deleted` as its last event, then ends.
pub async fn streams_say_what_was_deleted_and_end_with_the_chat(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    target.create_message(&token, chat, "first").await;
    target.create_message(&token, chat, "second").await;
    let mut stream = EventStream::open(target, &events_path(&token, chat), Some("0")).await;
    stream.events(2).await;
    target
        .delete(&message_path(&token, chat, 1))
        .await
        .expect_status(202);
    let deleted = stream.events(1).await.remove(0);
    assert_eq!(deleted.event.as_deref(), Some("message.deleted"));
    assert_eq!(deleted.json()["number"], 1);
    assert!(deleted.json()["deleted_at"].is_string(), "{deleted:?}");
    target
        .delete(&chat_path(&token, chat))
        .await
        .expect_status(202);
    let last = stream.events(1).await.remove(0);
    assert_eq!(last.event.as_deref(), Some("chat.deleted"), "{last:?}");
    assert!(last.seq() > deleted.seq());
    stream.expect_end(Duration::from_secs(5)).await;
    target
        .get(&events_path(&token, chat))
        .await
        .expect_error(404, "not_found");
}

/// Deleting an application needs the admin key; then its token names nothing, and a new application
/// never sees what it held.
pub async fn deleting_an_application_needs_the_admin_key(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    target.create_message(&token, chat, "grebe").await;
    count_becomes(target, &token, chat, 1).await;
    let path = application_path(&token);
    target.delete(&path).await.expect_error(401, "unauthorized");
    let wrong = target
        .send(
            target
                .request(Method::DELETE, &path)
                .header(AUTHORIZATION, "Bearer not-the-key"),
        )
        .await;
    wrong.expect_error(401, "unauthorized");
    target.get(&path).await.expect_status(200);

    target.delete_as_admin(&path).await.expect_status(202);
    target.get(&path).await.expect_error(404, "not_found");
    target
        .get(&chat_path(&token, chat))
        .await
        .expect_error(404, "not_found");
    target
        .post(&chats_path(&token), &json!({}))
        .await
        .expect_error(404, "not_found");
    // Asked again, it queues the removal again (a retry after a failure finishes it).
    target.delete_as_admin(&path).await.expect_status(202);
}
