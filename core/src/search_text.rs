//! What a search looks for, and how text is compared. Pure, and shared by both search engines: the
//! embedded index folds bodies and queries with [`fold`], and the OpenSearch adapter indexes the folded
//! body and sends folded terms, so both give the same answers.

use unicode_normalization::UnicodeNormalization;

use crate::domain::AppId;
use crate::error::{CoreError, CoreResult};

/// The most terms (words and quoted phrases) one query may hold: each is one more lookup per page.
pub const MAX_TERMS: usize = 16;

/// A text as searches compare it: full Unicode case folding of its canonical decomposition, recomposed
/// (`café` written with `é` or with `e` and a combining accent folds the same; `ß` folds to `ss`), every
/// run of white space as one space. One rule goes beyond the standard's caseless match: the dot above
/// that folding leaves after `i` (`İ` folds to `i̇`) is dropped, as `i` and `j` already carry their dot
/// (Unicode's soft-dotted letters), so `istanbul` finds `İSTANBUL`.
pub fn fold(text: &str) -> String {
    const DOT_ABOVE: char = '\u{307}';
    let folded = caseless::default_case_fold_str(&text.nfd().collect::<String>());
    let mut out = String::with_capacity(folded.len());
    let mut previous = ' ';
    let mut in_space = false;
    for c in folded.nfd() {
        if c == DOT_ABOVE && matches!(previous, 'i' | 'j') {
            continue;
        }
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(c);
            in_space = false;
        }
        previous = c;
    }
    out.nfc().collect()
}

/// A parsed query: every term must occur in a body (after [`fold`]), each anywhere in it; a quoted
/// phrase is one term, so its words match together and in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchTerms {
    terms: Vec<String>,
}

impl SearchTerms {
    /// Words split at white space; text between double quotes is a phrase (an unclosed quote runs to
    /// the end). Empty phrases are dropped, and a term repeated counts once.
    pub fn parse(query: &str) -> CoreResult<SearchTerms> {
        let mut terms: Vec<String> = Vec::new();
        for (index, part) in query.split('"').enumerate() {
            let folded = fold(part);
            let quoted = index % 2 == 1;
            let pieces: Vec<&str> = if quoted {
                vec![folded.trim()]
            } else {
                folded.split(' ').collect()
            };
            for piece in pieces.into_iter().filter(|p| !p.is_empty()) {
                if !terms.iter().any(|t| t == piece) {
                    terms.push(piece.to_string());
                }
            }
        }
        if terms.is_empty() {
            return Err(CoreError::invalid_query(
                "q",
                "must hold a word or a quoted phrase",
            ));
        }
        if terms.len() > MAX_TERMS {
            return Err(CoreError::invalid_query(
                "q",
                format!("holds more than {MAX_TERMS} words and phrases"),
            ));
        }
        Ok(SearchTerms { terms })
    }

    /// The folded terms, in the order the query gave them.
    pub fn terms(&self) -> &[String] {
        &self.terms
    }

    /// Whether a body holds every term; `folded_body` is the body through [`fold`].
    pub fn matches(&self, folded_body: &str) -> bool {
        self.terms.iter().all(|term| folded_body.contains(term))
    }
}

/// How a search orders what it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SearchOrder {
    /// As chats show them, latest first: by number within a chat; across an application's chats by
    /// creation time (to the millisecond, as both engines keep it), then chat, then number.
    #[default]
    Newest,
    /// The search engine's score first: bodies where the terms weigh most.
    Relevance,
}

impl SearchOrder {
    pub fn parse(raw: Option<&str>) -> CoreResult<SearchOrder> {
        match raw {
            None | Some("newest") => Ok(SearchOrder::Newest),
            Some("relevance") => Ok(SearchOrder::Relevance),
            Some(_) => Err(CoreError::invalid_query(
                "order",
                "must be newest or relevance",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SearchOrder::Newest => "newest",
            SearchOrder::Relevance => "relevance",
        }
    }
}

/// Where a search looks: one chat of an application, or all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchScope {
    pub app: AppId,
    pub chat: Option<u64>,
}

/// How far in its order the engine's last page read: the next page starts after it. Opaque to clients,
/// who follow `Link`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchCursor {
    /// In newest order, the last message read: ([`NewestKey`]).
    Newest(NewestKey),
    /// In relevance order, how many of the engine's candidates were read.
    Skip(u64),
}

/// A message's place in newest order, highest first: its creation in milliseconds (0 within one chat,
/// where the number alone decides), its chat, its number.
pub type NewestKey = (i64, u64, u64);

/// The key a message sorts by in newest order within `scope`.
pub fn newest_key(scope: SearchScope, created_ms: i64, chat: u64, number: u64) -> NewestKey {
    match scope.chat {
        Some(_) => (0, chat, number),
        None => (created_ms, chat, number),
    }
}

/// The most candidates a relevance walk reads from its start: pages past it are not offered. A page
/// starting here and holding the most a page may (plus one) stays within OpenSearch's default result
/// window (docs.opensearch.org, install-and-configure/configuring-opensearch/index-settings:
/// `index.max_result_window`, 10,000: `from` + `size` may not pass it).
pub const RELEVANCE_WINDOW: u64 = 8_000;

impl SearchCursor {
    /// Reads a cursor a page's `Link` gave; one that does not fit the order and scope is refused.
    pub fn parse(raw: &str, order: SearchOrder, scope: SearchScope) -> CoreResult<SearchCursor> {
        let invalid = || CoreError::invalid_query("after", "is not a cursor this search gave");
        let numbers: Vec<u64> = raw
            .split('.')
            .map(|part| crate::domain::canonical_number(part).ok_or_else(invalid))
            .collect::<CoreResult<_>>()?;
        match (order, scope.chat, numbers.as_slice()) {
            (SearchOrder::Newest, Some(chat), [number]) => {
                Ok(SearchCursor::Newest((0, chat, *number)))
            }
            (SearchOrder::Newest, None, [ms, chat, number]) => Ok(SearchCursor::Newest((
                i64::try_from(*ms).map_err(|_| invalid())?,
                *chat,
                *number,
            ))),
            (SearchOrder::Relevance, _, [skip]) if *skip <= RELEVANCE_WINDOW => {
                Ok(SearchCursor::Skip(*skip))
            }
            _ => Err(invalid()),
        }
    }

    /// The cursor as `Link` carries it, for a search in `scope`.
    pub fn render(&self, scope: SearchScope) -> String {
        match (self, scope.chat) {
            (SearchCursor::Newest((_, _, number)), Some(_)) => number.to_string(),
            (SearchCursor::Newest((ms, chat, number)), None) => format!("{ms}.{chat}.{number}"),
            (SearchCursor::Skip(skip), _) => skip.to_string(),
        }
    }
}

/// One search: what, where, in which order, from where, how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchRequest {
    pub scope: SearchScope,
    pub terms: SearchTerms,
    pub order: SearchOrder,
    pub after: Option<SearchCursor>,
    pub limit: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(query: &str) -> Vec<String> {
        SearchTerms::parse(query).unwrap().terms
    }

    #[test]
    fn composed_and_decomposed_accents_fold_the_same() {
        assert_eq!(fold("caf\u{e9}"), fold("cafe\u{301}"));
        assert_eq!(fold("CAF\u{c9}"), fold("cafe\u{301}"));
        assert_ne!(fold("café"), fold("cafe"), "accents still count");
    }

    #[test]
    fn full_case_folding_finds_what_lowercasing_misses() {
        assert!(fold("İSTANBUL").contains(&fold("istanbul")));
        assert!(fold("Straße").contains(&fold("STRASSE")));
        assert_eq!(fold("ΣΊΣΥΦΟΣ"), fold("σίσυφος"));
        assert_eq!(fold("ﬁne"), "fine");
    }

    #[test]
    fn white_space_runs_fold_to_one_space() {
        assert_eq!(fold("a \t\n b"), "a b");
    }

    #[test]
    fn words_and_quoted_phrases_are_terms() {
        assert_eq!(terms("alpha  Bravo"), ["alpha", "bravo"]);
        assert_eq!(
            terms(r#"say "Hello   World" now"#),
            ["say", "hello world", "now"]
        );
        assert_eq!(terms(r#"open "quote runs on"#), ["open", "quote runs on"]);
        assert_eq!(terms("same SAME same"), ["same"]);
        assert!(SearchTerms::parse(r#" "" "#).is_err());
        let many = (0..=MAX_TERMS).map(|n| format!("w{n}")).collect::<Vec<_>>();
        assert!(SearchTerms::parse(&many.join(" ")).is_err());
    }

    #[test]
    fn every_term_must_match_and_a_phrase_matches_in_order() {
        let body = fold("The message race was won by Bravo Alpha");
        assert!(SearchTerms::parse("message race").unwrap().matches(&body));
        assert!(SearchTerms::parse("ace ssag").unwrap().matches(&body));
        assert!(!SearchTerms::parse("message lost").unwrap().matches(&body));
        assert!(
            SearchTerms::parse(r#""bravo alpha""#)
                .unwrap()
                .matches(&body)
        );
        assert!(
            !SearchTerms::parse(r#""alpha bravo""#)
                .unwrap()
                .matches(&body)
        );
    }

    #[test]
    fn cursors_read_back_as_they_were_written() {
        let chat = SearchScope {
            app: 1,
            chat: Some(4),
        };
        let app = SearchScope { app: 1, chat: None };
        for (cursor, scope, order) in [
            (SearchCursor::Newest((0, 4, 17)), chat, SearchOrder::Newest),
            (
                SearchCursor::Newest((1_800_000_000_123, 9, 2)),
                app,
                SearchOrder::Newest,
            ),
            (SearchCursor::Skip(40), app, SearchOrder::Relevance),
        ] {
            let raw = cursor.render(scope);
            assert_eq!(SearchCursor::parse(&raw, order, scope).unwrap(), cursor);
        }
        assert!(SearchCursor::parse("1.2.3", SearchOrder::Newest, chat).is_err());
        assert!(SearchCursor::parse("7", SearchOrder::Newest, app).is_err());
        assert!(SearchCursor::parse("8001", SearchOrder::Relevance, app).is_err());
    }
}
