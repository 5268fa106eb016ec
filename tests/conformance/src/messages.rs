//! `POST|GET …/chats/{number}/messages`, `GET|PUT …/messages/{number}`.

use std::collections::BTreeMap;

use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};

use crate::checks::{assert_chat, assert_location, assert_message, timestamp, walk};
use crate::target::{
    CATCH_UP, Target, chat_path, eventually, message_path, messages_path, number_of, numbers_of,
};

/// The largest body the contract accepts, in UTF-8 bytes.
const MAX_BODY_BYTES: usize = 65_536;

/// Polls the message list until `accept` holds for it; returns the list.
pub async fn messages_eventually(
    target: &Target,
    token: &str,
    chat: u64,
    what: &str,
    accept: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let path = format!("{}?limit=1000", messages_path(token, chat));
    eventually(CATCH_UP, || async {
        let reply = target.get(&path).await;
        reply.expect_status(200);
        let messages = reply.items();
        if accept(&messages) {
            Ok(messages)
        } else {
            let shown: Vec<String> = messages.iter().take(20).map(Value::to_string).collect();
            Err(format!(
                "{what}: {} messages, first ones {shown:?}",
                messages.len()
            ))
        }
    })
    .await
}

/// Polls the chat until its `messages_count` is `expected`.
pub async fn messages_count_eventually(target: &Target, token: &str, chat: u64, expected: u64) {
    let path = chat_path(token, chat);
    eventually(CATCH_UP, || async {
        let reply = target.get(&path).await;
        reply.expect_status(200);
        let read = reply.json();
        assert_chat(&read);
        if read["messages_count"] == expected {
            Ok(())
        } else {
            Err(format!(
                "messages_count {}, want {expected}",
                read["messages_count"]
            ))
        }
    })
    .await
}

fn bodies_by_number(messages: &[Value]) -> BTreeMap<u64, String> {
    messages
        .iter()
        .map(|message| {
            (
                number_of(message),
                message["body"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

pub async fn create_returns_201_numbered_from_1(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    for number in 1..=3 {
        let body = format!("message {number}");
        let reply = target
            .post(&messages_path(&token, chat), &json!({ "body": body }))
            .await;
        reply.expect_status(201);
        let message = reply.json();
        assert_message(&message);
        assert_eq!(number_of(&message), number, "{}", reply.describe());
        assert_eq!(message["body"], body.as_str(), "{}", reply.describe());
        assert_location(&reply, &message_path(&token, chat, number));
    }
    let other_chat = target.create_chat(&token).await;
    assert_eq!(
        target.create_message(&token, other_chat, "first").await,
        1,
        "numbering is not per chat"
    );
}

/// Read your own write, even into a chat whose own creation may still be queued; the data read at once
/// is the data that stays.
pub async fn a_new_message_is_readable_at_once(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    let created = target
        .post(
            &messages_path(&token, chat),
            &json!({ "body": "read me now" }),
        )
        .await;
    created.expect_status(201);
    let created = created.json();
    let read = target.get(&message_path(&token, chat, 1)).await;
    read.expect_status(200);
    assert_eq!(
        read.json(),
        created,
        "GET right after the 201 differs: {}",
        read.describe()
    );
    let listed = messages_eventually(target, &token, chat, "the message listed", |messages| {
        messages.len() == 1
    })
    .await;
    assert_eq!(
        listed[0], created,
        "the stored message differs from the 201 body"
    );
    let read_later = target.get(&message_path(&token, chat, 1)).await;
    read_later.expect_status(200);
    assert_eq!(read_later.json(), created, "{}", read_later.describe());
}

pub async fn edit_returns_200_and_is_read_back(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    let number = target.create_message(&token, chat, "before").await;
    let path = message_path(&token, chat, number);
    let original = target.get(&path).await.expect_status(200).json();
    let reply = target.put(&path, &json!({ "body": "after" })).await;
    reply.expect_status(200);
    let edited = reply.json();
    assert_message(&edited);
    assert_eq!(number_of(&edited), number, "{}", reply.describe());
    assert_eq!(edited["body"], "after", "{}", reply.describe());
    assert_eq!(
        edited["created_at"],
        original["created_at"],
        "{}",
        reply.describe()
    );
    assert!(
        timestamp(&edited, "updated_at") >= timestamp(&original, "updated_at"),
        "updated_at went back: {}",
        reply.describe()
    );
    let read = target.get(&path).await;
    read.expect_status(200);
    assert_eq!(
        read.json(),
        edited,
        "GET right after the PUT differs: {}",
        read.describe()
    );
    let listed = messages_eventually(target, &token, chat, "the edited body listed", |messages| {
        bodies_by_number(messages).get(&number).map(String::as_str) == Some("after")
    })
    .await;
    assert_eq!(
        listed[0], edited,
        "the stored edit differs from the PUT answer"
    );
}

/// A PUT right after the POST is never lost or overtaken by the creation, and the last of
/// several PUTs wins, at once and after the worker caught up.
pub async fn the_last_put_wins(target: &Target) {
    const MESSAGES: u64 = 20;
    const EDITS: usize = 4;
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    let final_bodies: Vec<(u64, String)> = join_all((0..MESSAGES).map(|index| {
        let token = &token;
        async move {
            let number = target
                .create_message(token, chat, &format!("original {index}"))
                .await;
            let path = message_path(token, chat, number);
            let mut last = String::new();
            for edit in 1..=EDITS {
                last = format!("edit {edit} of message {index}");
                let reply = target.put(&path, &json!({ "body": last })).await;
                reply.expect_status(200);
                assert_eq!(reply.json()["body"], last.as_str(), "{}", reply.describe());
            }
            let read = target.get(&path).await;
            read.expect_status(200);
            assert_eq!(
                read.json()["body"],
                last.as_str(),
                "read right after the PUTs: {}",
                read.describe()
            );
            (number, last)
        }
    }))
    .await;
    let expected: BTreeMap<u64, String> = final_bodies.into_iter().collect();
    messages_eventually(
        target,
        &token,
        chat,
        "every message listed with its last body",
        |messages| bodies_by_number(messages) == expected,
    )
    .await;
    for (number, body) in &expected {
        let read = target.get(&message_path(&token, chat, *number)).await;
        read.expect_status(200);
        assert_eq!(
            read.json()["body"],
            body.as_str(),
            "after the worker caught up: {}",
            read.describe()
        );
    }
}

pub async fn list_is_ordered_and_paginated(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    for index in 1..=5 {
        target
            .create_message(&token, chat, &format!("page item {index}"))
            .await;
    }
    messages_eventually(target, &token, chat, "five messages", |messages| {
        messages.len() == 5
    })
    .await;
    let walked = walk(
        target,
        &format!("{}?limit=2", messages_path(&token, chat)),
        2,
    )
    .await;
    assert_eq!(numbers_of(&walked), [1, 2, 3, 4, 5]);
    for (index, message) in walked.iter().enumerate() {
        assert_message(message);
        assert_eq!(message["body"], format!("page item {}", index + 1));
    }
    let beyond = target
        .get(&format!("{}?after=5", messages_path(&token, chat)))
        .await;
    beyond.expect_status(200);
    assert!(beyond.items().is_empty(), "{}", beyond.describe());
    assert!(beyond.next_link().is_none(), "{}", beyond.describe());
    let empty_chat = target.create_chat(&token).await;
    let empty = target.get(&messages_path(&token, empty_chat)).await;
    empty.expect_status(200);
    assert!(empty.items().is_empty(), "{}", empty.describe());
    assert!(empty.next_link().is_none(), "{}", empty.describe());
}

/// Without `limit` a page holds 100 messages; `limit` goes up to 1000.
pub async fn the_default_page_is_100(target: &Target) {
    const MESSAGES: u64 = 101;
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    join_all((0..MESSAGES).map(|index| {
        let token = &token;
        async move {
            target
                .create_message(token, chat, &format!("default page {index}"))
                .await
        }
    }))
    .await;
    messages_eventually(target, &token, chat, "101 messages", |messages| {
        messages.len() as u64 == MESSAGES
    })
    .await;
    let path = messages_path(&token, chat);
    let first = target.get(&path).await;
    first.expect_status(200);
    assert_eq!(
        numbers_of(&first.items()),
        (1..=100).collect::<Vec<_>>(),
        "{}",
        first.describe()
    );
    let next = first
        .next_link()
        .unwrap_or_else(|| panic!("no next link on a full first page: {}", first.describe()));
    let second = target.get(&next).await;
    second.expect_status(200);
    assert_eq!(numbers_of(&second.items()), [101], "{}", second.describe());
    assert!(second.next_link().is_none(), "{}", second.describe());
    let whole = target.get(&format!("{path}?limit=1000")).await;
    whole.expect_status(200);
    assert_eq!(
        numbers_of(&whole.items()),
        (1..=MESSAGES).collect::<Vec<_>>(),
        "{}",
        whole.describe()
    );
    assert!(whole.next_link().is_none(), "{}", whole.describe());
}

/// 200 concurrent creates into one chat over many connections: numbers exactly 1..=200, each
/// stored once, and the count exact.
pub async fn concurrent_creates_into_one_chat_get_1_to_200(target: &Target) {
    const MESSAGES: u64 = 200;
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    let created: Vec<(u64, String)> = join_all((0..MESSAGES).map(|index| {
        let token = &token;
        async move {
            let body = format!("concurrent {index}");
            (target.create_message(token, chat, &body).await, body)
        }
    }))
    .await;
    let mut numbers: Vec<u64> = created.iter().map(|(number, _)| *number).collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (1..=MESSAGES).collect::<Vec<_>>(),
        "numbers of concurrent creates"
    );
    let expected: BTreeMap<u64, String> = created.into_iter().collect();
    let listed = messages_eventually(target, &token, chat, "all 200 stored", |messages| {
        messages.len() as u64 >= MESSAGES
    })
    .await;
    assert_eq!(
        numbers_of(&listed),
        (1..=MESSAGES).collect::<Vec<_>>(),
        "each number listed once, in order"
    );
    assert_eq!(
        bodies_by_number(&listed),
        expected,
        "each number holds the body it was created with"
    );
    messages_count_eventually(target, &token, chat, MESSAGES).await;
}

pub async fn messages_count_is_exact_after_catch_up(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    let other_chat = target.create_chat(&token).await;
    for index in 0..6 {
        target
            .create_message(&token, chat, &format!("counted {index}"))
            .await;
    }
    target.create_message(&token, other_chat, "elsewhere").await;
    messages_count_eventually(target, &token, chat, 6).await;
    messages_count_eventually(target, &token, other_chat, 1).await;
}

/// Bodies come back exactly as sent: every Unicode plane, SQL, markup, escapes and whitespace.
pub async fn bodies_round_trip_verbatim(target: &Target) {
    let bodies = [
        "日本語のメッセージ",
        "emoji 😀🎉 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 (plane 1), 𠜎𠜱 (plane 2), \u{E0041} (plane 14), \u{10FFFD} (plane 16)",
        "'; DROP TABLE messages; --",
        "\" OR \"1\"=\"1\" /* %_ */ \\\\ \\",
        "<script>alert('x')</script> &amp; {\"json\": [1, 2]}",
        "line one\nline two\r\n\ttabbed   ",
        " ",
        "\u{200B}zero width\u{FEFF}",
    ];
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    for (index, body) in bodies.iter().enumerate() {
        let number = target.create_message(&token, chat, body).await;
        assert_eq!(number, index as u64 + 1);
        let read = target.get(&message_path(&token, chat, number)).await;
        read.expect_status(200);
        assert_eq!(read.json()["body"], *body, "{}", read.describe());
    }
    let listed = messages_eventually(target, &token, chat, "every body listed", |messages| {
        messages.len() == bodies.len()
    })
    .await;
    for (message, body) in listed.iter().zip(bodies) {
        assert_eq!(message["body"], body, "stored body differs");
    }
}

/// A body is 1 character to 65,536 bytes of UTF-8, on create and on edit.
pub async fn body_size_is_bounded(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    let path = messages_path(&token, chat);
    let largest_ascii = "a".repeat(MAX_BODY_BYTES);
    let largest_multibyte = format!("{}a", "日".repeat((MAX_BODY_BYTES - 1) / 3));
    let largest_four_byte = "😀".repeat(MAX_BODY_BYTES / 4);
    for body in [&largest_ascii, &largest_multibyte, &largest_four_byte] {
        assert_eq!(body.len(), MAX_BODY_BYTES);
        let number = target.create_message(&token, chat, body).await;
        let read = target.get(&message_path(&token, chat, number)).await;
        read.expect_status(200);
        assert_eq!(
            read.json()["body"],
            body.as_str(),
            "a body at the limit is not read back whole"
        );
    }
    let one_over = [
        "a".repeat(MAX_BODY_BYTES + 1),
        format!("{}ab", "日".repeat((MAX_BODY_BYTES - 1) / 3)),
        format!("{}a", "😀".repeat(MAX_BODY_BYTES / 4)),
    ];
    let invalid: Vec<Value> = one_over
        .iter()
        .map(|body| json!({ "body": body }))
        .chain([
            json!({ "body": "" }),
            json!({ "body": null }),
            json!({ "body": 7 }),
            json!({ "body": ["x"] }),
            json!({}),
            json!({ "text": "x" }),
        ])
        .collect();
    let edited = message_path(&token, chat, 1);
    for body in &invalid {
        for (method, path) in [
            (Method::POST, path.as_str()),
            (Method::PUT, edited.as_str()),
        ] {
            let reply = target.send_json(method, path, body).await;
            reply.expect_error(422, "invalid_field");
            assert!(
                reply.error_message().contains("body"),
                "the message does not name the field: {}",
                reply.describe()
            );
        }
    }
    for shape in [json!([]), json!("body"), json!(null), json!(1)] {
        target
            .post(&path, &shape)
            .await
            .expect_error(422, "invalid_field");
        target
            .put(&edited, &shape)
            .await
            .expect_error(422, "invalid_field");
    }
    let unchanged = target.get(&edited).await;
    unchanged.expect_status(200);
    assert_eq!(
        unchanged.json()["body"],
        largest_ascii.as_str(),
        "a rejected edit changed the message"
    );
    assert_eq!(
        target.create_message(&token, chat, "next").await,
        4,
        "a rejected message took a number"
    );
    let listed = messages_eventually(
        target,
        &token,
        chat,
        "only the accepted messages",
        |messages| messages.len() == 4,
    )
    .await;
    assert_eq!(numbers_of(&listed), [1, 2, 3, 4]);
}

pub async fn unknown_messages_are_404(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    target.create_message(&token, chat, "only one").await;
    for number in [
        "2",
        "0",
        "-1",
        "abc",
        "1.0",
        "9223372036854775808",
        "340282366920938463463374607431768211456",
    ] {
        let path = format!("{}/{number}", messages_path(&token, chat));
        target.get(&path).await.expect_error(404, "not_found");
        target
            .put(&path, &json!({ "body": "x" }))
            .await
            .expect_error(404, "not_found");
    }
}

/// A message number has one spelling: a leading zero, a sign or percent-encoded digits name nothing,
/// even when the number they spell is a message that exists.
pub async fn non_canonical_message_numbers_are_404(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    target.create_message(&token, chat, "canonical").await;
    for number in ["01", "0001", "+1", "%2B1", "%31"] {
        let path = format!("{}/{number}", messages_path(&token, chat));
        target.get(&path).await.expect_error(404, "not_found");
        target
            .put(&path, &json!({ "body": "x" }))
            .await
            .expect_error(404, "not_found");
    }
    let reply = target.get(&message_path(&token, chat, 1)).await;
    reply.expect_status(200);
    assert_eq!(reply.json()["body"], "canonical", "{}", reply.describe());
}
