//! Entity tags and the conditional requests built on them, as RFC 9110 defines them: `ETag` (§8.8.3),
//! `If-Match` (§13.1.1, strong comparison) and `If-None-Match` (§13.1.2, weak comparison).
//!
//! A message's tag is its version, decided when the edit was accepted, so the answer to an edit
//! already carries the tag the stored message will have. A chat's tag is made of what its answer
//! shows that changes (its count, its latest change and `updated_at`).

use crate::http::views::{ChatView, MessageView};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::{ObjectBuilder, Required, Type};

use super::error::ApiError;

/// What a resource's answer is tagged with.
pub trait Tagged {
    /// The opaque part of a strong tag, without its quotes.
    fn tag(&self) -> String;

    fn etag(&self) -> HeaderValue {
        strong_tag(&self.tag())
    }
}

/// `"opaque"`: the opaque parts of our tags are digits and dots, visible ASCII.
fn strong_tag(opaque: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{opaque}\"")).expect("tags are visible ASCII")
}

/// The tag of a message at this version, as its answers carry it.
pub fn version_etag(version: u64) -> HeaderValue {
    strong_tag(&version.to_string())
}

impl Tagged for MessageView {
    fn tag(&self) -> String {
        self.version.to_string()
    }
}

impl Tagged for ChatView {
    fn tag(&self) -> String {
        format!(
            "{}.{}.{}",
            self.messages_count,
            self.last_event_id,
            self.updated_at.timestamp_micros()
        )
    }
}

/// One entity tag of a request header: `"opaque"`, or `W/"opaque"` when weak.
#[derive(Debug, PartialEq, Eq)]
struct EntityTag<'a> {
    weak: bool,
    opaque: &'a str,
}

/// A request's list of entity tags, or `*`: `None` when the header is absent.
#[derive(Debug, PartialEq, Eq)]
enum TagList<'a> {
    Any,
    Tags(Vec<EntityTag<'a>>),
}

/// Reads `If-Match` or `If-None-Match`: `*`, or a list of entity tags (§8.8.3), several fields making
/// one list (§5.3) and empty members skipped (§5.6.1). A member that is not an entity tag (`5`, `"a b"`)
/// is kept as one no state ever has, so it never matches: an `If-Match` of nothing but those is a 412,
/// an `If-None-Match` a full answer, as for a tag the resource no longer has. `*` counts only alone.
fn tag_list<'a>(headers: &'a HeaderMap, name: &'static str) -> Option<TagList<'a>> {
    let mut tags = Vec::new();
    let mut members = 0;
    let mut any = false;
    let mut present = false;
    for value in headers.get_all(name) {
        present = true;
        let text = value.to_str().unwrap_or_default();
        for member in text.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            members += 1;
            any |= member == "*";
            let (weak, quoted) = match member.strip_prefix("W/") {
                Some(rest) => (true, rest),
                None => (false, member),
            };
            let opaque = quoted
                .strip_prefix('"')
                .and_then(|rest| rest.strip_suffix('"'))
                .filter(|opaque| {
                    opaque
                        .bytes()
                        .all(|b| b == b'!' || (b'#'..=b'~').contains(&b))
                });
            if let Some(opaque) = opaque {
                tags.push(EntityTag { weak, opaque });
            }
        }
    }
    match (present, any && members == 1) {
        (false, _) => None,
        (true, true) => Some(TagList::Any),
        (true, false) => Some(TagList::Tags(tags)),
    }
}

/// `If-Match` of an edit: the versions the edit is conditioned on, `None` for none (absent, or `*`,
/// which only asks that the message exist, as the edit does anyway). Weak tags never match.
pub struct IfMatch(pub Option<Vec<u64>>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(IfMatch(match tag_list(&parts.headers, "if-match") {
            None | Some(TagList::Any) => None,
            Some(TagList::Tags(tags)) => Some(
                tags.iter()
                    .filter(|tag| !tag.weak)
                    .filter_map(|tag| chatsys_core::domain::canonical_number(tag.opaque))
                    .collect(),
            ),
        }))
    }
}

/// `If-None-Match` of a read: the opaque parts of its tags, compared weakly with the answer's.
pub struct IfNoneMatch(Option<Condition>);

enum Condition {
    Any,
    Tags(Vec<String>),
}

impl<S: Send + Sync> FromRequestParts<S> for IfNoneMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(IfNoneMatch(
            match tag_list(&parts.headers, "if-none-match") {
                None => None,
                Some(TagList::Any) => Some(Condition::Any),
                Some(TagList::Tags(tags)) => Some(Condition::Tags(
                    tags.into_iter().map(|tag| tag.opaque.to_string()).collect(),
                )),
            },
        ))
    }
}

impl IfNoneMatch {
    /// The answer to a read: 304 with the tag when the client's copy is current (weak comparison, and
    /// `*` matches any current state), else 200 with the resource and its tag.
    pub fn answer<T: Tagged + serde::Serialize>(&self, resource: T) -> Response {
        let etag = resource.etag();
        let current = match &self.0 {
            None => false,
            Some(Condition::Any) => true,
            Some(Condition::Tags(tags)) => {
                let tag = resource.tag();
                tags.contains(&tag)
            }
        };
        let mut response = if current {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            axum::Json(resource).into_response()
        };
        response.headers_mut().insert(header::ETAG, etag);
        response
    }
}

/// A resource answered with its tag.
pub fn with_etag<T: Tagged + serde::Serialize>(resource: T) -> Response {
    let etag = resource.etag();
    let mut response = axum::Json(resource).into_response();
    response.headers_mut().insert(header::ETAG, etag);
    response
}

fn tag_header(name: &str, description: &str) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(description))
        // No pattern: what is not an entity tag is read as one that matches nothing, not refused.
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build()
}

impl utoipa::IntoParams for IfMatch {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![tag_header(
            "If-Match",
            "Edit only if the message is still in this state: the `ETag` of a read or an earlier \
             edit (a list of them, or `*`). When its version moved on, the answer is 412 `precondition_failed` with the \
             current `ETag`, and nothing changes. Of concurrent edits conditioned on one `ETag`, on \
             any server, one is accepted. `*` edits whatever the state.",
        )]
    }
}

impl utoipa::IntoParams for IfNoneMatch {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![tag_header(
            "If-None-Match",
            "The `ETag` of a copy the client holds: when it is still the current state, the answer \
             is 304 with no body.",
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append("if-match", HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn tag_lists_are_read_as_rfc_9110_writes_them() {
        let map = headers(&[r#""5", W/"7""#, r#""x", , 9, "a b""#]);
        let Some(TagList::Tags(tags)) = tag_list(&map, "if-match") else {
            panic!("no tags");
        };
        assert_eq!(
            tags,
            [
                EntityTag {
                    weak: false,
                    opaque: "5"
                },
                EntityTag {
                    weak: true,
                    opaque: "7"
                },
                EntityTag {
                    weak: false,
                    opaque: "x"
                },
            ],
            "members that are no tags match nothing"
        );
        assert_eq!(tag_list(&headers(&["*"]), "if-match"), Some(TagList::Any));
        assert_eq!(tag_list(&HeaderMap::new(), "if-match"), None);
        let tags_of = |value: &str| match tag_list(&headers(&[value]), "if-match") {
            Some(TagList::Tags(tags)) => tags
                .iter()
                .map(|t| t.opaque.to_string())
                .collect::<Vec<_>>(),
            other => panic!("{value}: {other:?}"),
        };
        for matching_nothing in ["", "5", ","] {
            assert!(tags_of(matching_nothing).is_empty(), "{matching_nothing}");
        }
        assert_eq!(tags_of(r#"*, "5""#), ["5"], "`*` counts only alone");
    }
}
