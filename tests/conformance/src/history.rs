//! What a chat screen builds on: lists newest first with `before` and links both ways, entity tags and
//! conditional requests, and a history that the event stream continues without a gap or a repeat.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::chats::chats_eventually;
use crate::checks::assert_chat;
use crate::events::{EventStream, Frame, events_path};
use crate::messages::messages_eventually;
use crate::target::{
    CATCH_UP, Reply, Target, chat_path, chats_path, eventually, message_path, messages_path,
    numbers_of,
};

/// A chat with messages 1 to `count`, all of them listed.
async fn chat_with_messages(target: &Target, count: u64) -> (String, u64) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    for n in 1..=count {
        target.create_message(&token, chat, &format!("m{n}")).await;
    }
    messages_eventually(target, &token, chat, "all listed", |m| {
        m.len() as u64 == count
    })
    .await;
    (token, chat)
}

async fn page(target: &Target, path: &str) -> Reply {
    let reply = target.get(path).await;
    reply.expect_status(200);
    reply
}

pub async fn newest_first_pages_lead_back_to_the_first_message(target: &Target) {
    let (token, chat) = chat_with_messages(target, 5).await;
    let newest = page(
        target,
        &format!("{}?order=desc&limit=2", messages_path(&token, chat)),
    )
    .await;
    assert_eq!(numbers_of(&newest.items()), [5, 4], "{}", newest.describe());
    assert!(newest.link("prev").is_none(), "{}", newest.describe());
    let older = page(target, &newest.next_link().expect("a next page")).await;
    assert_eq!(numbers_of(&older.items()), [3, 2], "{}", older.describe());
    let oldest = page(target, &older.next_link().expect("a next page")).await;
    assert_eq!(numbers_of(&oldest.items()), [1], "{}", oldest.describe());
    assert!(oldest.next_link().is_none(), "{}", oldest.describe());
    // Back the way it came, still newest first.
    let back = page(target, &oldest.link("prev").expect("a prev page")).await;
    assert_eq!(numbers_of(&back.items()), [3, 2], "{}", back.describe());
    let top = page(target, &back.link("prev").expect("a prev page")).await;
    assert_eq!(numbers_of(&top.items()), [5, 4], "{}", top.describe());
    assert!(top.link("prev").is_none(), "{}", top.describe());
}

pub async fn before_mirrors_after(target: &Target) {
    let (token, chat) = chat_with_messages(target, 5).await;
    let path = messages_path(&token, chat);
    let earlier = page(target, &format!("{path}?before=4&limit=2")).await;
    assert_eq!(
        numbers_of(&earlier.items()),
        [2, 3],
        "oldest first, right before 4"
    );
    let next = page(target, &earlier.next_link().expect("a next page")).await;
    assert_eq!(numbers_of(&next.items()), [4, 5], "{}", next.describe());
    let prev = page(target, &earlier.link("prev").expect("a prev page")).await;
    assert_eq!(numbers_of(&prev.items()), [1], "{}", prev.describe());
    let newer = page(target, &format!("{path}?order=desc&after=2&limit=2")).await;
    assert_eq!(
        numbers_of(&newer.items()),
        [4, 3],
        "newest first, right after 2"
    );
    let between = page(target, &format!("{path}?after=1&before=5&limit=2")).await;
    assert_eq!(
        numbers_of(&between.items()),
        [2, 3],
        "oldest first, between 1 and 5"
    );
    let rest = page(target, &between.next_link().expect("a next page")).await;
    assert_eq!(
        numbers_of(&rest.items()),
        [4],
        "the next page stops before 5 too"
    );
    assert!(rest.next_link().is_none(), "{}", rest.describe());
    for bad in ["order=newest", "order=DESC", "before=-1", "before=01"] {
        target
            .get(&format!("{path}?{bad}"))
            .await
            .expect_error(400, "invalid_query");
    }
}

pub async fn chats_list_newest_first(target: &Target) {
    let token = target.create_token().await;
    for _ in 0..3 {
        target.create_chat(&token).await;
    }
    chats_eventually(target, &token, &[1, 2, 3]).await;
    let newest = page(
        target,
        &format!("{}?order=desc&limit=2", chats_path(&token)),
    )
    .await;
    assert_eq!(numbers_of(&newest.items()), [3, 2]);
    let rest = page(target, &newest.next_link().expect("a next page")).await;
    assert_eq!(numbers_of(&rest.items()), [1]);
    assert!(rest.next_link().is_none(), "{}", rest.describe());
}

/// A client lists the newest messages, then opens the stream after the change the page was read at:
/// it gets the changes the page did not show, and none it did.
pub async fn the_stream_continues_where_a_list_page_was_read(target: &Target) {
    let (token, chat) = chat_with_messages(target, 3).await;
    let listed = page(
        target,
        &format!("{}?order=desc", messages_path(&token, chat)),
    )
    .await;
    let read_at = listed
        .header("chat-last-event-id")
        .expect("a list of messages says the change it was read at")
        .to_string();
    assert_eq!(read_at, "3", "three creates: {}", listed.describe());
    let chat_read = target.get(&chat_path(&token, chat)).await.json();
    assert_chat(&chat_read);
    assert_eq!(chat_read["last_event_id"], 3, "{chat_read}");

    target.create_message(&token, chat, "m4").await;
    let edited = target
        .put(
            &message_path(&token, chat, 2),
            &json!({ "body": "m2, edited" }),
        )
        .await;
    edited.expect_status(200);
    let mut stream = EventStream::open(
        target,
        &format!("{}?after={read_at}", events_path(&token, chat)),
        None,
    )
    .await;
    let missed = stream.events(2).await;
    let got: BTreeSet<(String, u64, String)> = missed.iter().map(Frame::summary).collect();
    let want: BTreeSet<(String, u64, String)> = [
        ("message.created".to_string(), 4, "m4".to_string()),
        ("message.edited".to_string(), 2, "m2, edited".to_string()),
    ]
    .into();
    assert_eq!(got, want, "{missed:?}");
    stream.expect_no_event(Duration::from_millis(500)).await;
    // Once stored, the chat and its list say the same change.
    eventually(CATCH_UP, || async {
        let last = target.get(&chat_path(&token, chat)).await.json()["last_event_id"].clone();
        let header = page(target, &messages_path(&token, chat)).await;
        let listed = header.header("chat-last-event-id").map(str::to_string);
        if last == 5 && listed.as_deref() == Some("5") {
            Ok(())
        } else {
            Err(format!("chat at {last}, list at {listed:?}"))
        }
    })
    .await;
}

/// `GET` under `If-None-Match`.
async fn get_if_none_match(target: &Target, path: &str, tags: impl AsRef<str>) -> Reply {
    let request = target
        .request(Method::GET, path)
        .header("If-None-Match", tags.as_ref());
    target.send(request).await
}

/// `PUT` of a message's body under `If-Match`.
async fn edit_if_match(target: &Target, path: &str, tag: impl AsRef<str>, body: &str) -> Reply {
    let request = target
        .request(Method::PUT, path)
        .header("If-Match", tag.as_ref())
        .json(&json!({ "body": body }));
    target.send(request).await
}

fn etag(reply: &Reply) -> String {
    reply
        .header("etag")
        .unwrap_or_else(|| panic!("no ETag: {}", reply.describe()))
        .to_string()
}

pub async fn reads_carry_an_etag_and_answer_304_when_unchanged(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    let created = target
        .post(&messages_path(&token, chat), &json!({ "body": "tagged" }))
        .await;
    created.expect_status(201);
    let path = message_path(&token, chat, 1);
    let read = page(target, &path).await;
    assert_eq!(
        etag(&read),
        etag(&created),
        "a create's tag is the message's"
    );
    assert!(
        etag(&read).starts_with('"'),
        "a strong tag: {}",
        read.describe()
    );
    let unchanged = get_if_none_match(target, &path, etag(&read)).await;
    unchanged.expect_status(304);
    assert!(unchanged.bytes.is_empty(), "{}", unchanged.describe());
    assert_eq!(etag(&unchanged), etag(&read));
    let edited = target.put(&path, &json!({ "body": "retagged" })).await;
    edited.expect_status(200);
    assert_ne!(etag(&edited), etag(&read), "an edit is a new version");
    let changed = get_if_none_match(target, &path, etag(&read)).await;
    changed.expect_status(200);
    assert_eq!(changed.json()["body"], "retagged");
    assert_eq!(etag(&changed), etag(&edited));

    // A chat's state moves as the worker stores its changes (the create and the edit may be stored
    // as one change): read it once the edit is listed and the chat is at the list's change.
    let chat_path = chat_path(&token, chat);
    let chat_read = eventually(CATCH_UP, || async {
        let read = page(target, &chat_path).await;
        let listed = page(target, &messages_path(&token, chat)).await;
        let listed_at = listed.header("chat-last-event-id").map(str::to_string);
        let chat_at = read.json()["last_event_id"].to_string();
        let stored = listed
            .items()
            .first()
            .is_some_and(|m| m["body"] == "retagged");
        if stored && listed_at.as_deref() == Some(&chat_at) {
            Ok(read)
        } else {
            Err(format!(
                "the chat is at {}, its list at {listed_at:?}: {}",
                read.json(),
                listed.text()
            ))
        }
    })
    .await;
    let again = get_if_none_match(target, &chat_path, format!("\"x\", {}", etag(&chat_read))).await;
    again.expect_status(304);
}

pub async fn an_edit_conditioned_on_an_old_etag_is_412(target: &Target) {
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    target.create_message(&token, chat, "original").await;
    let path = message_path(&token, chat, 1);
    let original = etag(&page(target, &path).await);
    let first = edit_if_match(target, &path, &original, "first edit").await;
    first.expect_status(200);
    let late = edit_if_match(target, &path, &original, "lost update").await;
    late.expect_error(412, "precondition_failed");
    assert_eq!(etag(&late), etag(&first), "a 412 names the current version");
    assert_eq!(page(target, &path).await.json()["body"], "first edit");
    let weak = edit_if_match(target, &path, format!("W/{}", etag(&first)), "weak").await;
    weak.expect_error(412, "precondition_failed");
    let any = edit_if_match(target, &path, "*", "whatever the state").await;
    any.expect_status(200);
    // What is not a tag matches no version.
    let malformed = edit_if_match(target, &path, "not a tag", "x").await;
    malformed.expect_error(412, "precondition_failed");
    // Once stored, the version is the same.
    eventually(CATCH_UP, || async {
        let listed = page(target, &messages_path(&token, chat)).await.items();
        match listed.first() {
            Some(stored) if stored["body"] == "whatever the state" => Ok(()),
            stored => Err(format!("listed {stored:?}")),
        }
    })
    .await;
    let stored = get_if_none_match(target, &path, etag(&any)).await;
    stored.expect_status(304);
}
