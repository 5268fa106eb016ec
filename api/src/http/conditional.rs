//! Entity tags and the conditional requests built on them, as RFC 9110 defines them: `ETag` (§8.8.3),
//! `If-Match` (§13.1.1, strong comparison) and `If-None-Match` (§13.1.2, weak comparison).
//!
//! A message's tag is its version, decided when the edit was accepted, so the answer to an edit
//! already carries the tag the stored message will have. A chat's tag is made of what its answer
//! shows that changes (its count, its latest change and `updated_at`).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chatsys_core::CoreError;
use chatsys_core::view::{ChatView, MessageView};
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::{ObjectBuilder, Required, Type};

use super::error::ApiError;

/// What a resource's answer is tagged with.
pub trait Tagged {
    /// The opaque part of a strong tag, without its quotes.
    fn tag(&self) -> String;

    fn etag(&self) -> HeaderValue {
        HeaderValue::from_str(&format!("\"{}\"", self.tag())).expect("tags are visible ASCII")
    }
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

/// Reads `If-Match` or `If-None-Match` (`#entity-tag` or `*`; §8.8.3's `etagc` is `!` and `#` to `~`
/// besides `"`, plus obs-text, which no tag of ours holds). Several fields are one list (§5.3).
fn tag_list<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> Result<Option<TagList<'a>>, ApiError> {
    let invalid = || CoreError::invalid_header(name, "must be `*` or a list of entity tags").into();
    let mut tags = Vec::new();
    let mut any = false;
    let mut present = false;
    for value in headers.get_all(name) {
        present = true;
        let text = value.to_str().map_err(|_| invalid())?;
        for member in text.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            if member == "*" {
                any = true;
                continue;
            }
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
                })
                .ok_or_else(invalid)?;
            tags.push(EntityTag { weak, opaque });
        }
    }
    match (present, any, tags.is_empty()) {
        (false, _, _) => Ok(None),
        (true, true, true) => Ok(Some(TagList::Any)),
        (true, false, false) => Ok(Some(TagList::Tags(tags))),
        // `*` mixed with tags, or a field with no member at all.
        _ => Err(invalid()),
    }
}

/// `If-Match` of an edit: the versions the edit is conditioned on, `None` for none (absent, or `*`,
/// which only asks that the message exist, as the edit does anyway). Weak tags never match.
pub struct IfMatch(pub Option<Vec<u64>>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(IfMatch(match tag_list(&parts.headers, "if-match")? {
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

/// `If-None-Match` of a read, kept whole to compare with the answer's tag.
pub struct IfNoneMatch(Option<Vec<(bool, String)>>);

impl<S: Send + Sync> FromRequestParts<S> for IfNoneMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(IfNoneMatch(
            match tag_list(&parts.headers, "if-none-match")? {
                None => None,
                Some(TagList::Any) => Some(Vec::new()),
                Some(TagList::Tags(tags)) => Some(
                    tags.into_iter()
                        .map(|tag| (tag.weak, tag.opaque.to_string()))
                        .collect(),
                ),
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
            Some(tags) if tags.is_empty() => true,
            Some(tags) => {
                let tag = resource.tag();
                tags.iter().any(|(_, opaque)| *opaque == tag)
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
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r#"^(\*|(W/)?"[!#-~]*"( *, *(W/)?"[!#-~]*")*)$"#)),
        ))
        .build()
}

impl utoipa::IntoParams for IfMatch {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![tag_header(
            "If-Match",
            "Edit only if the message is still in this state: the `ETag` of a read or an earlier \
             edit. When its version moved on, the answer is 412 `precondition_failed` with the \
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
        let map = headers(&[r#""5", W/"7""#, r#""x""#]);
        let Some(TagList::Tags(tags)) = tag_list(&map, "if-match").unwrap() else {
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
            ]
        );
        assert_eq!(
            tag_list(&headers(&["*"]), "if-match").unwrap(),
            Some(TagList::Any)
        );
        assert_eq!(tag_list(&HeaderMap::new(), "if-match").unwrap(), None);
        for bad in ["5", r#""5"#, r#"*, "5""#, r#""a b""#, ","] {
            assert!(tag_list(&headers(&[bad]), "if-match").is_err(), "{bad}");
        }
    }
}
