//! `POST|GET /applications/{token}/chats`, `GET /applications/{token}/chats/{number}`.

use futures::future::join_all;
use reqwest::Method;
use serde_json::Value;

use crate::checks::{assert_application, assert_chat, assert_location, walk};
use crate::target::{
    CATCH_UP, Target, application_path, chat_path, chats_path, eventually, number_of, numbers_of,
};

/// Polls the chat list until it holds exactly `expected` (numbers, in order); returns the list.
pub(crate) async fn chats_eventually(target: &Target, token: &str, expected: &[u64]) -> Vec<Value> {
    let path = format!("{}?limit=1000", chats_path(token));
    eventually(CATCH_UP, || async {
        let reply = target.get(&path).await;
        reply.expect_status(200);
        let chats = reply.items();
        if numbers_of(&chats) == expected {
            Ok(chats)
        } else {
            Err(format!("chats {:?}, want {expected:?}", numbers_of(&chats)))
        }
    })
    .await
}

/// Polls the application until its `chats_count` is `expected`.
pub(crate) async fn chats_count_eventually(target: &Target, token: &str, expected: u64) {
    let path = application_path(token);
    eventually(CATCH_UP, || async {
        let reply = target.get(&path).await;
        reply.expect_status(200);
        let application = reply.json();
        assert_application(&application);
        if application["chats_count"] == expected {
            Ok(())
        } else {
            Err(format!(
                "chats_count {}, want {expected}",
                application["chats_count"]
            ))
        }
    })
    .await
}

/// Chats are numbered 1, 2, 3… per application, whether the body is empty or `{}`.
pub async fn create_returns_201_numbered_from_1(target: &Target) {
    let token = target.create_token().await;
    let path = chats_path(&token);
    let replies = [
        target.send_raw(Method::POST, &path, None, "").await,
        target
            .send_raw(Method::POST, &path, Some("application/json"), "{}")
            .await,
        target
            .send_raw(Method::POST, &path, Some("application/json"), "")
            .await,
        target.send_raw(Method::POST, &path, None, "{}").await,
    ];
    for (index, reply) in replies.iter().enumerate() {
        reply.expect_status(201);
        let chat = reply.json();
        assert_chat(&chat);
        let number = index as u64 + 1;
        assert_eq!(number_of(&chat), number, "{}", reply.describe());
        assert_eq!(chat["messages_count"], 0, "{}", reply.describe());
        assert_location(reply, &chat_path(&token, number));
    }
    let other_token = target.create_token().await;
    assert_eq!(
        target.create_chat(&other_token).await,
        1,
        "numbering is not per application"
    );
}

/// Read your own write: a chat can be read right after its 201, before the worker stored it.
pub async fn a_new_chat_is_readable_at_once(target: &Target) {
    let token = target.create_token().await;
    for expected in 1..=3 {
        let created = target
            .send_raw(Method::POST, &chats_path(&token), None, "")
            .await;
        created.expect_status(201);
        let read = target.get(&chat_path(&token, expected)).await;
        read.expect_status(200);
        let chat = read.json();
        assert_chat(&chat);
        assert_eq!(number_of(&chat), expected, "{}", read.describe());
        assert_eq!(chat["messages_count"], 0, "{}", read.describe());
        assert_eq!(
            chat["created_at"],
            created.json()["created_at"],
            "{}",
            read.describe()
        );
    }
}

pub async fn an_empty_list_is_an_empty_array(target: &Target) {
    let token = target.create_token().await;
    let reply = target.get(&chats_path(&token)).await;
    reply.expect_status(200);
    assert!(reply.items().is_empty(), "{}", reply.describe());
    assert!(
        reply.next_link().is_none(),
        "a next link on an empty list: {}",
        reply.describe()
    );
}

pub async fn list_is_ordered_and_paginated(target: &Target) {
    let token = target.create_token().await;
    for _ in 0..5 {
        target.create_chat(&token).await;
    }
    let all = chats_eventually(target, &token, &[1, 2, 3, 4, 5]).await;
    for chat in &all {
        assert_chat(chat);
    }

    let path = chats_path(&token);
    let walked = walk(target, &format!("{path}?limit=2"), 2).await;
    assert_eq!(numbers_of(&walked), [1, 2, 3, 4, 5]);

    let middle = target.get(&format!("{path}?after=2&limit=2")).await;
    middle.expect_status(200);
    assert_eq!(numbers_of(&middle.items()), [3, 4], "{}", middle.describe());
    assert!(
        middle.next_link().is_some(),
        "no next link before the last page: {}",
        middle.describe()
    );

    let exact_last = target.get(&format!("{path}?after=3&limit=2")).await;
    exact_last.expect_status(200);
    assert_eq!(
        numbers_of(&exact_last.items()),
        [4, 5],
        "{}",
        exact_last.describe()
    );
    assert!(
        exact_last.next_link().is_none(),
        "a next link on the last page: {}",
        exact_last.describe()
    );

    let beyond = target.get(&format!("{path}?after=5")).await;
    beyond.expect_status(200);
    assert!(beyond.items().is_empty(), "{}", beyond.describe());
    assert!(beyond.next_link().is_none(), "{}", beyond.describe());

    let default_page = target.get(&path).await;
    default_page.expect_status(200);
    assert_eq!(
        numbers_of(&default_page.items()),
        [1, 2, 3, 4, 5],
        "{}",
        default_page.describe()
    );
    assert!(
        default_page.next_link().is_none(),
        "{}",
        default_page.describe()
    );
}

pub async fn chats_count_is_exact_after_catch_up(target: &Target) {
    let token = target.create_token().await;
    for _ in 0..7 {
        target.create_chat(&token).await;
    }
    chats_count_eventually(target, &token, 7).await;
}

/// 50 concurrent creates in one application get the numbers 1..=50, each stored once.
pub async fn concurrent_creates_get_distinct_numbers(target: &Target) {
    const CHATS: u64 = 50;
    let token = target.create_token().await;
    let mut numbers = join_all((0..CHATS).map(|_| target.create_chat(&token))).await;
    numbers.sort_unstable();
    let expected: Vec<u64> = (1..=CHATS).collect();
    assert_eq!(numbers, expected, "numbers of concurrent creates");
    chats_eventually(target, &token, &expected).await;
    chats_count_eventually(target, &token, CHATS).await;
}

/// A chat number that was never given out, or is no number at all, is an unknown chat.
pub async fn unknown_chats_are_404(target: &Target) {
    let token = target.create_token().await;
    target.create_chat(&token).await;
    for number in [
        "2",
        "0",
        "-1",
        "01x",
        "abc",
        "1.5",
        "1e3",
        "%20",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551616",
        "99999999999999999999999999999999",
    ] {
        expect_no_such_chat(target, &format!("{}/{number}", chats_path(&token))).await;
    }
}

/// Every route under a chat path that names no chat is a 404.
async fn expect_no_such_chat(target: &Target, chat: &str) {
    target.get(chat).await.expect_error(404, "not_found");
    target
        .get(&format!("{chat}/messages"))
        .await
        .expect_error(404, "not_found");
    target
        .get(&format!("{chat}/messages/1"))
        .await
        .expect_error(404, "not_found");
    target
        .put(
            &format!("{chat}/messages/1"),
            &serde_json::json!({ "body": "hello" }),
        )
        .await
        .expect_error(404, "not_found");
    target
        .get(&format!("{chat}/messages/search?q=a"))
        .await
        .expect_error(404, "not_found");
    target
        .post(
            &format!("{chat}/messages"),
            &serde_json::json!({ "body": "hello" }),
        )
        .await
        .expect_error(404, "not_found");
}

pub async fn chats_of_an_unknown_application_are_404(target: &Target) {
    let path = chats_path(&"B".repeat(32));
    target.get(&path).await.expect_error(404, "not_found");
    target
        .send_raw(Method::POST, &path, None, "")
        .await
        .expect_error(404, "not_found");
    target
        .get(&format!("{path}/1"))
        .await
        .expect_error(404, "not_found");
}

/// A number has one spelling: a leading zero, a sign or percent-encoded digits name nothing, even
/// when the number they spell is a chat that exists.
pub async fn non_canonical_chat_numbers_are_404(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    assert_eq!(chat, 1);
    target.create_message(&token, chat, "canonical").await;
    for number in ["01", "001", "+1", "%2B1", "%31", "%30%31"] {
        expect_no_such_chat(target, &format!("{}/{number}", chats_path(&token))).await;
    }
    target.get(&chat_path(&token, 1)).await.expect_status(200);
}

/// Chat creation needs no body; one that is sent must be a JSON object.
pub async fn a_creation_body_must_be_an_object_when_present(target: &Target) {
    let token = target.create_token().await;
    for body in ["[1,2]", "[]", "\"chat\"", "1", "true", "null"] {
        target
            .send_raw(
                Method::POST,
                &chats_path(&token),
                Some("application/json"),
                body,
            )
            .await
            .expect_error(422, "invalid_field");
    }
    for body in ["", " \r\n", "{}", r#"{"ignored":[1,2]}"#] {
        target
            .send_raw(
                Method::POST,
                &chats_path(&token),
                Some("application/json"),
                body,
            )
            .await
            .expect_status(201);
    }
}
