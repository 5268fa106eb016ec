//! What clients see, and the rules their input must follow. Internal ids stay inside: an application is
//! known by its token, a chat by its number, a message by its number within the chat.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, CoreResult};

pub type AppId = u64;

pub const NAME_MAX_CHARS: usize = 255;
pub const BODY_MAX_BYTES: usize = 64 * 1024;
pub const PAGE_DEFAULT: u32 = 100;
pub const PAGE_MAX: u32 = 1000;
/// Tokens are 32 URL-safe characters; anything longer cannot be one.
pub const TOKEN_MAX_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Application {
    pub id: AppId,
    pub token: String,
    pub name: String,
    pub chats_count: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Deleted by its admin, its chats and messages on their way out: it answers nothing any more.
    #[serde(default)]
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chat {
    pub application_id: AppId,
    pub number: u64,
    pub messages_count: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The number of the chat's latest stored change (0 before its first): where a client that has
    /// read the chat opens its event stream.
    #[serde(default)]
    pub last_event: u64,
    /// A tombstone: the chat was deleted with its messages, and its number is never used again.
    #[serde(default)]
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub application_id: AppId,
    pub chat_number: u64,
    pub number: u64,
    pub body: String,
    /// 0 for the body given at creation; every edit carries a larger one, so the newest edit wins
    /// whatever order the commands are applied in.
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// A tombstone: the message was deleted (its body is gone, `version` and `updated_at` are the
    /// delete's), and its number is never used again.
    #[serde(default)]
    pub deleted: bool,
}

/// What a change did: to a message, its first state stored, a newer version of it, or its deletion;
/// or the deletion of the whole chat (the last change a chat has).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    Created,
    Edited,
    Deleted,
    /// The change's message names only the chat (number 0) and when the chat was deleted.
    ChatDeleted,
}

/// One change of a chat as stored: the `seq`-th of its chat (1, 2, 3… in the order the store committed
/// them), with the message as that change left it. Several states of one message merged in one batch
/// are one change, since only the last of them was ever stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatEvent {
    pub seq: u64,
    pub kind: ChangeKind,
    pub message: Message,
}

impl Message {
    /// Orders two states of the message, the later higher: by version, and at the same version a
    /// tombstone after the live state (a delete is the last change a message has).
    pub fn freshness(&self) -> u64 {
        self.version.saturating_mul(2) + u64::from(self.deleted)
    }

    /// What a delete leaves of the message: no body, the delete's version and time.
    pub fn tombstone(&self, version: u64, at: DateTime<Utc>) -> Message {
        Message {
            body: String::new(),
            version,
            updated_at: at,
            deleted: true,
            ..self.clone()
        }
    }
}

impl Chat {
    /// Orders two states of the chat, the later higher: by its latest change, and at the same change a
    /// tombstone after the live state.
    pub fn freshness(&self) -> u64 {
        self.last_event.saturating_mul(2) + u64::from(self.deleted)
    }
}

impl ChatEvent {
    /// The last change of a deleted chat, the `seq`-th of its changes.
    pub fn chat_deleted(app: AppId, chat: u64, seq: u64, at: DateTime<Utc>) -> ChatEvent {
        ChatEvent {
            seq,
            kind: ChangeKind::ChatDeleted,
            message: Message {
                application_id: app,
                chat_number: chat,
                number: 0,
                body: String::new(),
                version: 0,
                created_at: at,
                updated_at: at,
                deleted: true,
            },
        }
    }
}

/// A keyset page: at most `limit` items, shown in `order`, next to a cursor (or from one end of the list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Page {
    pub limit: u32,
    pub order: Order,
    pub cursor: Cursor,
}

/// The order a page shows its items in, by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Order {
    /// Oldest first.
    #[default]
    Asc,
    /// Newest first.
    Desc,
}

/// Where a page sits in its list: the items right after a number, right before one, between two
/// (from the end the order starts at), or those at the end the order starts from (the lowest numbers
/// in `Asc`, the highest in `Desc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cursor {
    Start,
    After(u64),
    Before(u64),
    Between(u64, u64),
}

/// What a store reads for a page: up to `limit` rows from a bound, walking an index one way, in the
/// order walked, and not past the far bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Numbers above `after` (and below `below`), lowest first.
    Up {
        after: u64,
        below: Option<u64>,
        limit: u32,
    },
    /// Numbers below `before` (or the highest, with none) and above `above`, highest first.
    Down {
        before: Option<u64>,
        above: u64,
        limit: u32,
    },
}

impl Page {
    /// The first page in number order.
    pub fn first(limit: u32) -> Self {
        Page {
            limit,
            order: Order::Asc,
            cursor: Cursor::Start,
        }
    }

    /// Whether the page was asked for next to a cursor, so that items may lie on its other side.
    pub fn has_cursor(&self) -> bool {
        !matches!(self.cursor, Cursor::Start | Cursor::After(0))
    }

    /// The index walk that reads this page, with one row more, which tells whether the list goes on
    /// in the direction walked. A page `before` a number in `Asc` order is read downwards and shown
    /// reversed (and `after` one in `Desc` upwards), so every page costs one walk of `limit` rows.
    pub fn scan(&self) -> Scan {
        let limit = self.limit + 1;
        let up = |after, below| Scan::Up {
            after,
            below,
            limit,
        };
        let down = |before, above| Scan::Down {
            before,
            above,
            limit,
        };
        match (self.cursor, self.order) {
            (Cursor::After(after), _) => up(after, None),
            (Cursor::Before(before), _) => down(Some(before), 0),
            (Cursor::Between(after, before), Order::Asc) => up(after, Some(before)),
            (Cursor::Between(after, before), Order::Desc) => down(Some(before), after),
            (Cursor::Start, Order::Asc) => up(0, None),
            (Cursor::Start, Order::Desc) => down(None, 0),
        }
    }

    /// Whether the walk runs against the order shown (its rows are then reversed).
    pub fn scans_backwards(&self) -> bool {
        matches!(
            (self.scan(), self.order),
            (Scan::Up { .. }, Order::Desc) | (Scan::Down { .. }, Order::Asc)
        )
    }
}

impl Scan {
    pub fn limit(&self) -> u32 {
        match *self {
            Scan::Up { limit, .. } | Scan::Down { limit, .. } => limit,
        }
    }
}

/// Timestamps are kept to the microsecond, which every store holds exactly.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Names must have at least one visible character: whitespace, control characters and the characters
/// Unicode says to render as nothing (zero-width spaces, joiners, BOM, variation selectors…) are not.
pub fn validate_name(name: &str) -> CoreResult<()> {
    let chars = name.chars().count();
    if !name.chars().any(is_visible) {
        return Err(CoreError::invalid("name", "must not be blank"));
    }
    if chars > NAME_MAX_CHARS {
        return Err(CoreError::invalid(
            "name",
            format!("must be at most {NAME_MAX_CHARS} characters"),
        ));
    }
    Ok(())
}

/// The characters that count as visible in a name, as a JSON Schema (ECMA-262) pattern: the OpenAPI
/// document states the rule with it, so a client's validator and the server agree. It is written with
/// `\xXX` and `\uXXXX` escapes only, which ECMA-262, Python and Rust regular expressions read alike.
pub const VISIBLE_CHARACTER: &str = r"[^\s\x00-\x1F\x7F-\x9F\u00AD\u034F\u061C\u115F\u1160\u17B4\u17B5\u180B-\u180F\u200B-\u200F\u202A-\u202E\u2060-\u206F\u3164\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFF8]";

/// Not whitespace, not a control character and not one of the Default_Ignorable_Code_Points of the
/// Basic Multilingual Plane (Unicode 16's DerivedCoreProperties.txt: the format characters that have no
/// glyph). The few beyond it (tag characters, musical and shorthand format controls) count as visible,
/// since a schema pattern cannot name them the same way in every regular expression dialect.
fn is_visible(c: char) -> bool {
    !(c.is_whitespace()
        || c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFF8}'
        ))
}

pub fn validate_body(body: &str) -> CoreResult<()> {
    if body.is_empty() {
        return Err(CoreError::invalid("body", "must not be empty"));
    }
    if body.len() > BODY_MAX_BYTES {
        return Err(CoreError::invalid(
            "body",
            format!("must be at most {BODY_MAX_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Parses a list's `limit`, `after`, `before` and `order` query values; absent values take their
/// defaults. Numbers are written one way only, as [`canonical_number`] says.
pub fn parse_page(
    limit: Option<&str>,
    after: Option<&str>,
    before: Option<&str>,
    order: Option<&str>,
) -> CoreResult<Page> {
    let limit = match limit {
        None => PAGE_DEFAULT,
        Some(raw) => match canonical_number(raw) {
            Some(n) if (1..=u64::from(PAGE_MAX)).contains(&n) => n as u32,
            _ => {
                return Err(CoreError::invalid_query(
                    "limit",
                    format!("must be an integer from 1 to {PAGE_MAX}"),
                ));
            }
        },
    };
    let order = match order {
        None | Some("asc") => Order::Asc,
        Some("desc") => Order::Desc,
        Some(_) => {
            return Err(CoreError::invalid_query("order", "must be `asc` or `desc`"));
        }
    };
    let cursor = match (
        parse_cursor("after", after)?,
        parse_cursor("before", before)?,
    ) {
        (None, None) => Cursor::Start,
        (Some(after), None) => Cursor::After(after),
        (None, Some(before)) => Cursor::Before(before),
        (Some(after), Some(before)) => Cursor::Between(after, before),
    };
    Ok(Page {
        limit,
        order,
        cursor,
    })
}

fn parse_cursor(name: &'static str, raw: Option<&str>) -> CoreResult<Option<u64>> {
    raw.map(|raw| {
        canonical_number(raw)
            .filter(|n| *n <= i64::MAX as u64)
            .ok_or_else(|| CoreError::invalid_query(name, "must be a non-negative integer"))
    })
    .transpose()
}

/// A number in a path: anything that is not a positive integer in canonical form names nothing, so it
/// is a 404.
pub fn parse_number(raw: &str, what: &'static str) -> CoreResult<u64> {
    canonical_number(raw)
        .filter(|n| *n >= 1 && *n <= i64::MAX as u64)
        .ok_or(CoreError::NotFound(what))
}

/// A number as we write it: decimal digits, no sign, no leading zero (but `0` itself), so each number
/// has one spelling and `01` or `+1` is not another name of 1.
pub fn canonical_number(raw: &str) -> Option<u64> {
    let digits = raw.as_bytes();
    let canonical = !digits.is_empty()
        && digits.iter().all(u8::is_ascii_digit)
        && (digits[0] != b'0' || digits.len() == 1);
    canonical.then(|| raw.parse::<u64>().ok()).flatten()
}

/// Tokens are generated by us; anything not shaped like one cannot name an application.
pub fn plausible_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= TOKEN_MAX_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// 32 characters of URL-safe base64 over 24 random bytes: 192 bits, unguessable.
pub fn generate_token() -> String {
    use base64::Engine;
    let bytes: [u8; 24] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    /// The pattern the OpenAPI document gives for names says exactly what the server accepts.
    #[test]
    fn the_visible_character_pattern_is_the_servers_rule() {
        let pattern = regex::Regex::new(VISIBLE_CHARACTER).unwrap();
        let mut buffer = [0; 4];
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            assert_eq!(
                pattern.is_match(c.encode_utf8(&mut buffer)),
                is_visible(c),
                "U+{:04X}",
                c as u32
            );
        }
    }

    use super::*;

    #[test]
    fn names_must_be_1_to_255_characters_and_not_blank() {
        assert!(validate_name("a").is_ok());
        assert!(validate_name(&"é".repeat(255)).is_ok());
        assert!(validate_name(&"é".repeat(256)).is_err());
        assert!(validate_name("").is_err());
        assert!(validate_name("   ").is_err());
    }

    #[test]
    fn names_without_a_visible_character_are_blank() {
        for blank in [
            "\u{200B}",
            "\u{200B}\u{200C}\u{200D}\u{2060}\u{FEFF}",
            "\0",
            "\u{1}\u{7F}",
            " \u{00A0}\u{3000}\t",
            "\u{00AD}\u{FE0F}\u{034F}",
        ] {
            assert!(validate_name(blank).is_err(), "{blank:?}");
        }
        for visible in ["\u{200B}a", "é", "😀", "\u{0301}", "-"] {
            assert!(validate_name(visible).is_ok(), "{visible:?}");
        }
    }

    #[test]
    fn bodies_are_limited_in_bytes() {
        assert!(validate_body("x").is_ok());
        assert!(validate_body(&"x".repeat(BODY_MAX_BYTES)).is_ok());
        assert!(validate_body(&"x".repeat(BODY_MAX_BYTES + 1)).is_err());
        assert!(validate_body("").is_err());
    }

    #[test]
    fn pages_default_and_reject_out_of_range_values() {
        assert_eq!(
            parse_page(None, None, None, None).unwrap(),
            Page::first(100)
        );
        assert_eq!(
            parse_page(Some("1000"), Some("7"), None, None).unwrap(),
            Page {
                limit: 1000,
                order: Order::Asc,
                cursor: Cursor::After(7)
            }
        );
        assert_eq!(
            parse_page(None, Some("0"), None, None).unwrap().cursor,
            Cursor::After(0)
        );
        for bad in ["0", "1001", "-1", "x", "", "01", "+1", " 1", "1 "] {
            assert!(
                parse_page(Some(bad), None, None, None).is_err(),
                "limit {bad}"
            );
        }
        for bad in ["-1", "x", "9223372036854775808", "00", "01", "+1"] {
            assert!(
                parse_page(None, Some(bad), None, None).is_err(),
                "after {bad}"
            );
            assert!(
                parse_page(None, None, Some(bad), None).is_err(),
                "before {bad}"
            );
        }
    }

    #[test]
    fn pages_run_newest_first_on_request() {
        let page = parse_page(Some("5"), None, Some("9"), Some("desc")).unwrap();
        assert_eq!(
            page,
            Page {
                limit: 5,
                order: Order::Desc,
                cursor: Cursor::Before(9)
            }
        );
        assert_eq!(
            page.scan(),
            Scan::Down {
                before: Some(9),
                above: 0,
                limit: 6
            }
        );
        assert!(!page.scans_backwards());
        for bad in ["DESC", "newest", ""] {
            assert!(
                parse_page(None, None, None, Some(bad)).is_err(),
                "order {bad}"
            );
        }
        let between = parse_page(None, Some("1"), Some("9"), Some("desc")).unwrap();
        assert_eq!(
            between.scan(),
            Scan::Down {
                before: Some(9),
                above: 1,
                limit: 101
            },
            "a range is read from the end its order starts at"
        );
    }

    #[test]
    fn a_page_against_its_order_walks_the_index_the_other_way() {
        let newest = Page {
            order: Order::Desc,
            ..Page::first(10)
        };
        assert_eq!(
            newest.scan(),
            Scan::Down {
                before: None,
                above: 0,
                limit: 11
            }
        );
        let older_in_asc = Page {
            cursor: Cursor::Before(50),
            ..Page::first(10)
        };
        assert!(older_in_asc.scans_backwards());
        let newer_in_desc = Page {
            order: Order::Desc,
            cursor: Cursor::After(50),
            ..Page::first(10)
        };
        assert_eq!(
            newer_in_desc.scan(),
            Scan::Up {
                after: 50,
                below: None,
                limit: 11
            }
        );
        assert!(newer_in_desc.scans_backwards());
        assert!(!Page::first(10).has_cursor());
        assert!(older_in_asc.has_cursor());
    }

    #[test]
    fn path_numbers_outside_1_to_i64_max_name_nothing() {
        assert_eq!(parse_number("42", "chat").unwrap(), 42);
        for bad in [
            "0",
            "-3",
            "abc",
            "9223372036854775808",
            "99999999999999999999999",
            "01",
            "+1",
            "00",
            "",
            " 1",
            "1.0",
        ] {
            assert!(
                matches!(parse_number(bad, "chat"), Err(CoreError::NotFound("chat"))),
                "{bad}"
            );
        }
    }

    #[test]
    fn tokens_are_url_safe_distinct_and_plausible() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(plausible_token(&a));
        assert!(!plausible_token("../etc/passwd"));
        assert!(!plausible_token(&"a".repeat(65)));
    }
}
