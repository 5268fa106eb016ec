//! Path and query parameters. Each type is both what a handler extracts and what the OpenAPI document
//! says of that parameter, so the two cannot differ.
//!
//! A path segment that cannot name a resource (a malformed token, `0`, `01`, a number past the largest)
//! is the documented 404, decided here, before the handler runs.

use chatsys_core::domain::{self, Page, TOKEN_MAX_LEN};
use chatsys_core::search_text::SearchOrder;
use serde::de::{Deserializer, Error as _};
use serde::{Deserialize, Serialize};
use utoipa::openapi::{ObjectBuilder, RefOr, Schema, Type};
use utoipa::{IntoParams, PartialSchema, ToSchema};

use super::error::ApiError;

/// An application's token, as creating the application returned it.
#[derive(Debug, Serialize)]
pub struct Token(pub String);

/// The largest number a chat or message can have (numbers are stored as signed 64-bit integers).
const NUMBER_MAX: u64 = i64::MAX as u64;

const TOKEN_PATTERN: &str = "^[A-Za-z0-9_-]+$";

impl PartialSchema for Token {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(TOKEN_MAX_LEN))
            .pattern(Some(TOKEN_PATTERN))
            .into()
    }
}

impl ToSchema for Token {}

impl<'de> Deserialize<'de> for Token {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let token = String::deserialize(deserializer)?;
        if domain::plausible_token(&token) {
            Ok(Token(token))
        } else {
            Err(D::Error::custom("application not found"))
        }
    }
}

/// A chat's or a message's number in a path: 1, 2, 3… in canonical decimal.
fn number_schema() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
            utoipa::openapi::KnownFormat::Int64,
        )))
        .minimum(Some(1))
        .maximum(Some(NUMBER_MAX))
        .into()
}

fn number<'de, D: Deserializer<'de>>(deserializer: D, what: &str) -> Result<u64, D::Error> {
    let raw = String::deserialize(deserializer)?;
    domain::canonical_number(&raw)
        .filter(|n| (1..=NUMBER_MAX).contains(n))
        .ok_or_else(|| D::Error::custom(format!("{what} not found")))
}

/// A number in a path, whose refusal names what it numbers (`chat not found`).
macro_rules! number_parameter {
    ($name:ident, $what:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Copy)]
        pub struct $name(pub u64);

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                number_schema()
            }
        }

        impl ToSchema for $name {}

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                number(deserializer, $what).map($name)
            }
        }
    };
}

number_parameter!(
    ChatNumber,
    "chat",
    "A chat's number within its application."
);
number_parameter!(
    MessageNumber,
    "message",
    "A message's number within its chat."
);

/// `/applications/{token}`
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ApplicationPath {
    /// The application's token.
    #[param(inline)]
    pub token: Token,
}

/// `/applications/{token}/chats/{number}`
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ChatPath {
    /// The application's token.
    #[param(inline)]
    pub token: Token,
    /// The chat's number within the application.
    #[param(inline)]
    pub number: ChatNumber,
}

/// `/applications/{token}/chats/{number}/messages/{message}`
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct MessagePath {
    /// The application's token.
    #[param(inline)]
    pub token: Token,
    /// The chat's number within the application.
    #[param(inline)]
    pub number: ChatNumber,
    /// The message's number within the chat.
    #[param(inline)]
    pub message: MessageNumber,
}

/// The parameters of the lists of chats and of messages. They arrive as text and are checked by
/// [`domain::parse_page`], so the answer to a bad one names it.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// How many items a page holds, 1 to 1000; 100 when absent.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// `asc` (oldest first, the default) or `desc` (newest first): the order of the items on a page
    /// and of the pages `Link` leads through.
    #[param(value_type = Option<String>, pattern = "^(asc|desc)$")]
    pub order: Option<String>,
    /// The page of items numbered right after this one, as `Link` gives it (with `before`: the items
    /// between the two).
    #[param(value_type = Option<u64>, minimum = 0, maximum = 9223372036854775807_u64)]
    pub after: Option<String>,
    /// The page of items numbered right before this one, as `Link` gives it.
    #[param(value_type = Option<u64>, minimum = 0, maximum = 9223372036854775807_u64)]
    pub before: Option<String>,
}

impl ListQuery {
    pub fn page(&self) -> Result<Page, ApiError> {
        Ok(domain::parse_page(
            self.limit.as_deref(),
            self.after.as_deref(),
            self.before.as_deref(),
            self.order.as_deref(),
        )?)
    }
}

/// The parameters a search pages with.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchPageQuery {
    /// How many messages a page holds, 1 to 1000; 100 when absent.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// Where the previous page ended, as the `Link` header of that page gives it (opaque).
    #[param(value_type = Option<String>, min_length = 1, max_length = 64, pattern = "^[0-9.]+$")]
    pub after: Option<String>,
}

impl SearchPageQuery {
    pub fn limit(&self) -> Result<u32, ApiError> {
        Ok(domain::parse_page(self.limit.as_deref(), None, None, None)?.limit)
    }
}

/// The list of applications pages by token rather than by number.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ApplicationsQuery {
    /// How many applications a page holds, 1 to 1000; 100 when absent.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// The token of the last application of the previous page, as the `Link` header of that page gives it.
    #[param(value_type = Option<Token>, inline)]
    pub after: Option<String>,
}

impl ApplicationsQuery {
    pub fn limit(&self) -> Result<u32, ApiError> {
        Ok(domain::parse_page(self.limit.as_deref(), None, None, None)?.limit)
    }
}

/// What a search looks for; it pages with [`SearchPageQuery`].
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Words, each to be found anywhere in a message's body (a part of a word matches), and "quoted
    /// phrases", found as written: a message matches when it holds every one. Compared after Unicode
    /// normalisation and full case folding. At most 16 words and phrases.
    #[param(value_type = String, required = true, min_length = 1, pattern = r"\S")]
    pub q: Option<String>,
    /// An older name of `q`, still accepted and left out of the document; `q` wins when both are given.
    #[param(ignore)]
    pub key: Option<String>,
    /// `newest` (the default): latest first, as chats show them (across chats by creation time);
    /// `relevance`: where the words weigh most first (the first 8,000 candidates only). The answer's
    /// `Search-Order` header says which order it is in.
    #[param(value_type = Option<String>, pattern = "^(newest|relevance)$")]
    pub order: Option<String>,
}

impl SearchQuery {
    /// The text searched for: `q`, or its older name `key`.
    pub fn text(&self) -> Result<&str, ApiError> {
        Ok(self
            .q
            .as_deref()
            .or(self.key.as_deref())
            .ok_or(chatsys_core::CoreError::invalid_query("q", "is required"))?)
    }

    pub fn order(&self) -> Result<SearchOrder, ApiError> {
        Ok(SearchOrder::parse(self.order.as_deref())?)
    }
}

/// Where a chat's event stream starts.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// The `id` of the last event received: the stream starts with the change after it (0: from the
    /// chat's first change). `Last-Event-ID` wins when both are given.
    #[param(value_type = Option<u64>, minimum = 0, maximum = 9223372036854775807_u64)]
    pub after: Option<String>,
}
