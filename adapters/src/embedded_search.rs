//! The embedded search engine (tantivy): standalone mode, and deployments without OpenSearch. Bodies are
//! indexed as character trigrams of their folded text ([`fold`]), with their frequencies (for ranking)
//! but no positions, which would double the indexing work: a body holding every trigram of every term
//! of three characters or more is a candidate; shorter terms add no condition. Every candidate is
//! checked against the folded body before it is returned, so only bodies holding every term come back.
//! Candidates are read in the search's order from just after the page's cursor, and one request reads
//! at most a fixed budget of body text: a page that reaches it ends early with a cursor, so every match
//! stays reachable and no query's cost grows with the chat or the application.

use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::DateTime;
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing,
    TextOptions, Value,
};
use tantivy::tokenizer::{Token, TokenStream, Tokenizer};
use tantivy::{
    DocAddress, Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, SegmentReader,
    TantivyDocument, Term,
};

use chatsys_core::domain::{AppId, Message};
use chatsys_core::error::{Backend, CoreError, CoreResult};
use chatsys_core::plan::ChatKey;
use chatsys_core::ports::{IndexRefusal, Search, SearchPage};
use chatsys_core::search_text::{
    NewestKey, RELEVANCE_WINDOW, SearchCursor, SearchOrder, SearchRequest, SearchScope, fold,
    newest_key,
};

fn unavailable(e: impl std::fmt::Display) -> CoreError {
    CoreError::unavailable(Backend::Search, e)
}

#[derive(Clone, Copy)]
struct Fields {
    id: Field,
    chat: Field,
    app_key: Field,
    app: Field,
    chat_number: Field,
    number: Field,
    body: Field,
    version: Field,
    created_at: Field,
    created_ms: Field,
    updated_at: Field,
}

/// The index writer's memory, on one indexing thread. The worker commits every few hundred documents,
/// and each commit starts a new segment whose term table is sized from this budget and zeroed and walked
/// whole: tantivy's smallest budget (and one thread, one segment a commit) keeps that per-commit work small.
const WRITER_MEMORY_BYTES: usize = 15_000_000;

/// The name the trigram tokenizer is registered under, in every process that opens the index.
const TRIGRAMS: &str = "chatsys_folded_trigrams";

/// The most body text one search request reads to check its candidates. A page that reaches it ends
/// early with a cursor (the client follows `Link` as usual), so one query costs at most this much
/// reading, whatever the chat holds.
const SCAN_BUDGET_BYTES: usize = 4 << 20;
/// Candidates taken from the index at a time, at first; each further round takes twice as many.
const FIRST_CHUNK: usize = 64;
const MAX_CHUNK: usize = 4096;

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let body = TextOptions::default().set_stored().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(TRIGRAMS)
            .set_index_option(IndexRecordOption::WithFreqs),
    );
    let fields = Fields {
        id: builder.add_text_field("id", STRING),
        chat: builder.add_text_field("chat", STRING),
        app_key: builder.add_text_field("app", STRING),
        app: builder.add_u64_field("application_id", STORED),
        chat_number: builder.add_u64_field("chat_number", STORED | FAST),
        number: builder.add_u64_field("number", STORED | FAST | INDEXED),
        body: builder.add_text_field("body", body),
        version: builder.add_u64_field("version", STORED),
        created_at: builder.add_i64_field("created_at", STORED),
        created_ms: builder.add_i64_field("created_ms", FAST | INDEXED),
        updated_at: builder.add_i64_field("updated_at", STORED),
    };
    (builder.build(), fields)
}

/// Splits a text into the character trigrams of its folded form, in order. Registered with the index,
/// so the indexing threads tokenize the body themselves (a pre-tokenized value would travel through the
/// document as JSON, which cost more than the indexing), and used for queries too, so both sides agree.
#[derive(Clone, Default)]
struct TrigramTokenizer {
    chars: Vec<char>,
    token: Token,
}

struct TrigramStream<'a> {
    chars: &'a [char],
    next: usize,
    token: &'a mut Token,
}

impl Tokenizer for TrigramTokenizer {
    type TokenStream<'a> = TrigramStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> TrigramStream<'a> {
        self.chars.clear();
        self.chars.extend(fold(text).chars());
        self.token.reset();
        TrigramStream {
            chars: &self.chars,
            next: 0,
            token: &mut self.token,
        }
    }
}

impl TokenStream for TrigramStream<'_> {
    fn advance(&mut self) -> bool {
        let Some(window) = self.chars.get(self.next..self.next + 3) else {
            return false;
        };
        self.token.text.clear();
        self.token.text.extend(window);
        self.token.position = self.next;
        self.next += 1;
        true
    }

    fn token(&self) -> &Token {
        self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        self.token
    }
}

/// The distinct trigrams of the query's terms (folded already; folding again changes nothing).
fn trigrams(terms: &[String]) -> Vec<String> {
    let mut tokenizer = TrigramTokenizer::default();
    let mut grams = Vec::new();
    for term in terms {
        let mut stream = tokenizer.token_stream(term);
        while stream.advance() {
            grams.push(stream.token().text.clone());
        }
    }
    grams.sort_unstable();
    grams.dedup();
    grams
}

fn chat_key(app: AppId, chat: u64) -> String {
    format!("{app}:{chat}")
}

/// The embedded index, shared by the tasks that use it: each call runs on a blocking thread.
#[derive(Clone)]
pub struct EmbeddedSearch(Arc<SearchIndex>);

struct SearchIndex {
    index: Index,
    reader: IndexReader,
    /// `None` in a read-only process, and after a failure until the next write opens a new writer: an
    /// I/O error (too many open files, a full disk) kills tantivy's writer for good.
    writer: Option<Mutex<Option<IndexWriter>>>,
    fields: Fields,
}

/// What one round of candidates was read with: where the walk stands, and how many it takes.
enum Walk {
    Newest(Option<NewestKey>),
    Relevance(u64),
}

impl EmbeddedSearch {
    /// Opens (or creates) the index in `dir`. Only one process may write; others open it read-only and
    /// see each commit within about half a second.
    pub fn open(dir: &Path, writable: bool) -> CoreResult<Self> {
        std::fs::create_dir_all(dir).map_err(unavailable)?;
        let (schema, fields) = schema();
        let directory = tantivy::directory::MmapDirectory::open(dir).map_err(unavailable)?;
        let index = Index::open_or_create(directory, schema).map_err(unavailable)?;
        index
            .tokenizers()
            .register(TRIGRAMS, TrigramTokenizer::default());
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::OnCommitWithDelay)
            .try_into()
            .map_err(unavailable)?;
        let writer = if writable {
            Some(Mutex::new(Some(open_writer(&index)?)))
        } else {
            None
        };
        Ok(EmbeddedSearch(Arc::new(SearchIndex {
            index,
            reader,
            writer,
            fields,
        })))
    }
}

impl SearchIndex {
    /// Removes the documents these terms name, in one commit.
    fn forget_blocking(&self, terms: Vec<Term>) -> CoreResult<()> {
        self.write(|writer| {
            for term in terms {
                writer.delete_term(term);
            }
            Ok(())
        })
    }

    /// Adds the messages in one commit (a deleted message's state removes its document).
    fn index_blocking(&self, messages: &[Message]) -> CoreResult<()> {
        self.write(|writer| {
            for m in messages {
                writer.delete_term(Term::from_field_text(self.fields.id, &document_id(m)));
                if !m.deleted {
                    writer.add_document(self.document(m))?;
                }
            }
            Ok(())
        })
    }

    /// Runs `changes` and commits them, with a new writer when the last one failed. On any failure the
    /// writer is dropped (rolling back what it had not committed), so the retry starts clean.
    fn write(
        &self,
        changes: impl FnOnce(&mut IndexWriter) -> tantivy::Result<()>,
    ) -> CoreResult<()> {
        let slot = self
            .writer
            .as_ref()
            .ok_or_else(|| unavailable("this process opened the index read-only"))?;
        let mut slot = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let writer = match slot.as_mut() {
            Some(writer) => writer,
            None => slot.insert(open_writer(&self.index)?),
        };
        let written = changes(writer).and_then(|()| writer.commit().map(drop));
        if let Err(e) = written {
            tracing::warn!(error = %e, "embedded index write failed; a new writer will retry it");
            *slot = None;
            return Err(unavailable(e));
        }
        self.reader.reload().map_err(unavailable)
    }

    fn document(&self, m: &Message) -> TantivyDocument {
        let f = self.fields;
        let mut doc = TantivyDocument::default();
        doc.add_text(f.id, document_id(m));
        doc.add_text(f.chat, chat_key(m.application_id, m.chat_number));
        doc.add_text(f.app_key, m.application_id.to_string());
        doc.add_u64(f.app, m.application_id);
        doc.add_u64(f.chat_number, m.chat_number);
        doc.add_u64(f.number, m.number);
        doc.add_text(f.body, &m.body);
        doc.add_u64(f.version, m.version);
        doc.add_i64(f.created_at, m.created_at.timestamp_micros());
        doc.add_i64(f.created_ms, m.created_at.timestamp_millis());
        doc.add_i64(f.updated_at, m.updated_at.timestamp_micros());
        doc
    }

    fn message(&self, doc: &TantivyDocument) -> Option<Message> {
        let f = self.fields;
        let u = |field| doc.get_first(field).and_then(|v| v.as_u64());
        let t = |field| {
            doc.get_first(field)
                .and_then(|v| v.as_i64())
                .and_then(DateTime::from_timestamp_micros)
        };
        Some(Message {
            application_id: u(f.app)?,
            chat_number: u(f.chat_number)?,
            number: u(f.number)?,
            body: doc.get_first(f.body)?.as_str()?.to_string(),
            version: u(f.version)?,
            created_at: t(f.created_at)?,
            updated_at: t(f.updated_at)?,
            deleted: false,
        })
    }

    /// Documents in the scope that hold every trigram of the query, and (newest order) sort no higher
    /// than where the walk stands.
    fn candidates(&self, scope: SearchScope, grams: &[String], walk: &Walk) -> BooleanQuery {
        let f = self.fields;
        let scope_term = match scope.chat {
            Some(chat) => Term::from_field_text(f.chat, &chat_key(scope.app, chat)),
            None => Term::from_field_text(f.app_key, &scope.app.to_string()),
        };
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(
            Occur::Must,
            Box::new(TermQuery::new(scope_term, IndexRecordOption::Basic)),
        )];
        if let Walk::Newest(Some((ms, _, number))) = *walk {
            let below = match scope.chat {
                Some(_) => RangeQuery::new(
                    Bound::Unbounded,
                    Bound::Excluded(Term::from_field_u64(f.number, number)),
                ),
                None => RangeQuery::new(
                    Bound::Unbounded,
                    Bound::Included(Term::from_field_i64(f.created_ms, ms)),
                ),
            };
            clauses.push((Occur::Must, Box::new(below)));
        }
        clauses.extend(grams.iter().map(|g| {
            let term = TermQuery::new(
                Term::from_field_text(f.body, g),
                IndexRecordOption::WithFreqs,
            );
            (Occur::Must, Box::new(term) as Box<dyn Query>)
        }));
        BooleanQuery::new(clauses)
    }

    /// One round of candidates in the search's order, each with its place in it.
    fn round(
        &self,
        searcher: &Searcher,
        scope: SearchScope,
        grams: &[String],
        walk: &Walk,
        chunk: usize,
    ) -> CoreResult<Vec<(Option<NewestKey>, DocAddress)>> {
        let query = self.candidates(scope, grams, walk);
        match *walk {
            Walk::Newest(below) => {
                // Highest key first; documents at or above the cursor (the same millisecond, already
                // read) sort as `None`, below every other, and end the walk when they come up.
                let key = move |segment: &SegmentReader| {
                    let column =
                        |name| segment.fast_fields().column_opt::<i64>(name).ok().flatten();
                    let created = column("created_ms");
                    let chat = segment.fast_fields().u64("chat_number").ok();
                    let number = segment.fast_fields().u64("number").ok();
                    move |doc| {
                        let key = newest_key(
                            scope,
                            created.as_ref()?.first(doc)?,
                            chat.as_ref()?.first(doc)?,
                            number.as_ref()?.first(doc)?,
                        );
                        below.is_none_or(|below| key < below).then_some(key)
                    }
                };
                searcher
                    .search(&query, &TopDocs::with_limit(chunk).order_by(key))
                    .map_err(unavailable)
            }
            Walk::Relevance(skip) => Ok(searcher
                .search(
                    &query,
                    &TopDocs::with_limit(chunk)
                        .and_offset(skip as usize)
                        .order_by_score(),
                )
                .map_err(unavailable)?
                .into_iter()
                .map(|(_, address)| (None, address))
                .collect()),
        }
    }

    fn search_blocking(&self, request: &SearchRequest) -> CoreResult<SearchPage> {
        let scope = request.scope;
        let limit = request.limit;
        let grams = trigrams(request.terms.terms());
        let searcher = self.reader.searcher();
        let mut walk = match (request.order, request.after) {
            (SearchOrder::Newest, Some(SearchCursor::Newest(key))) => Walk::Newest(Some(key)),
            (SearchOrder::Newest, _) => Walk::Newest(None),
            (SearchOrder::Relevance, Some(SearchCursor::Skip(skip))) => Walk::Relevance(skip),
            (SearchOrder::Relevance, _) => Walk::Relevance(0),
        };
        let cursor = |walk: &Walk| match *walk {
            Walk::Newest(key) => key.map(SearchCursor::Newest),
            Walk::Relevance(skip) => (skip < RELEVANCE_WINDOW).then_some(SearchCursor::Skip(skip)),
        };
        let mut found: Vec<Message> = Vec::new();
        let mut read = 0usize;
        let mut chunk = FIRST_CHUNK;
        loop {
            let candidates = self.round(&searcher, scope, &grams, &walk, chunk)?;
            let mut exhausted = candidates.len() < chunk;
            for (key, address) in candidates {
                let at = match (&mut walk, key) {
                    (Walk::Newest(_), None) => {
                        exhausted = true;
                        break;
                    }
                    (Walk::Newest(at), Some(key)) => {
                        let before = *at;
                        *at = Some(key);
                        Walk::Newest(before)
                    }
                    (Walk::Relevance(skip), _) => {
                        *skip += 1;
                        Walk::Relevance(*skip - 1)
                    }
                };
                let doc: TantivyDocument = searcher.doc(address).map_err(unavailable)?;
                let Some(message) = self.message(&doc) else {
                    continue;
                };
                read += message.body.len();
                if request.terms.matches(&fold(&message.body)) {
                    if found.len() == limit {
                        // One match past the page: the next page starts where this one ended.
                        return Ok(SearchPage {
                            messages: found,
                            next: cursor(&at),
                        });
                    }
                    found.push(message);
                }
                if read >= SCAN_BUDGET_BYTES {
                    // Everything up to here is read: the next page goes on from it.
                    return Ok(SearchPage {
                        messages: found,
                        next: cursor(&walk),
                    });
                }
            }
            if exhausted {
                return Ok(SearchPage {
                    messages: found,
                    next: None,
                });
            }
            if let Walk::Relevance(skip) = walk
                && skip >= RELEVANCE_WINDOW
            {
                return Ok(SearchPage {
                    messages: found,
                    next: None,
                });
            }
            chunk = (chunk * 2).min(MAX_CHUNK);
        }
    }
}

fn document_id(m: &Message) -> String {
    format!("{}:{}:{}", m.application_id, m.chat_number, m.number)
}

fn open_writer(index: &Index) -> CoreResult<IndexWriter> {
    index
        .writer_with_num_threads(1, WRITER_MEMORY_BYTES)
        .map_err(unavailable)
}

#[async_trait]
impl Search for EmbeddedSearch {
    async fn ping(&self) -> CoreResult<()> {
        Ok(())
    }

    async fn index(&self, messages: &[Message]) -> CoreResult<Vec<IndexRefusal>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let this = self.0.clone();
        let messages = messages.to_vec();
        tokio::task::spawn_blocking(move || this.index_blocking(&messages))
            .await
            .map_err(unavailable)??;
        Ok(Vec::new())
    }

    async fn forget(&self, chats: &[ChatKey], applications: &[AppId]) -> CoreResult<()> {
        let f = self.0.fields;
        let mut terms: Vec<Term> = chats
            .iter()
            .map(|(app, chat)| Term::from_field_text(f.chat, &chat_key(*app, *chat)))
            .collect();
        terms.extend(
            applications
                .iter()
                .map(|app| Term::from_field_text(f.app_key, &app.to_string())),
        );
        if terms.is_empty() {
            return Ok(());
        }
        let this = self.0.clone();
        tokio::task::spawn_blocking(move || this.forget_blocking(terms))
            .await
            .map_err(unavailable)?
    }

    async fn search(&self, request: &SearchRequest) -> CoreResult<SearchPage> {
        if request.limit == 0 {
            return Ok(SearchPage::default());
        }
        let this = self.0.clone();
        let request = request.clone();
        tokio::task::spawn_blocking(move || this.search_blocking(&request))
            .await
            .map_err(unavailable)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(app: AppId, chat: u64, number: u64, body: &str, version: u64) -> Message {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        Message {
            application_id: app,
            chat_number: chat,
            number,
            body: body.into(),
            version,
            created_at: at,
            updated_at: at,
            deleted: false,
        }
    }

    fn request(
        app: AppId,
        chat: Option<u64>,
        q: &str,
        after: Option<SearchCursor>,
        limit: usize,
    ) -> SearchRequest {
        SearchRequest {
            scope: SearchScope { app, chat },
            terms: chatsys_core::search_text::SearchTerms::parse(q).unwrap(),
            order: SearchOrder::Newest,
            after,
            limit,
        }
    }

    fn in_chat(q: &str, after: u64, limit: usize) -> SearchRequest {
        let after = (after > 0).then_some(SearchCursor::Newest((0, 1, after)));
        request(1, Some(1), q, after, limit)
    }

    /// The numbers found in the chat, newest first.
    async fn numbers(search: &EmbeddedSearch, app: AppId, chat: u64, q: &str) -> Vec<u64> {
        search
            .search(&request(app, Some(chat), q, None, 100))
            .await
            .unwrap()
            .messages
            .into_iter()
            .map(|m| m.number)
            .collect()
    }

    #[tokio::test]
    async fn finds_substrings_case_insensitively_only_in_the_chat() {
        let dir = tempfile::tempdir().unwrap();
        let search = EmbeddedSearch::open(dir.path(), true).unwrap();
        search
            .index(&[
                message(1, 1, 1, "Hello Rustaceans!", 0),
                message(1, 1, 2, "nothing here", 0),
                message(1, 2, 1, "rustaceans elsewhere", 0),
                message(2, 1, 1, "Rustaceans in another app", 0),
                message(1, 1, 3, "日本語 and 😀 and 𝔘𝔫𝔦", 0),
            ])
            .await
            .unwrap();
        assert_eq!(numbers(&search, 1, 1, "ustac").await, vec![1]);
        assert_eq!(numbers(&search, 1, 1, "USTAC").await, vec![1]);
        assert_eq!(numbers(&search, 1, 1, "ru").await, vec![1]);
        assert_eq!(numbers(&search, 1, 1, "o").await, vec![2, 1]);
        assert_eq!(numbers(&search, 1, 1, "本語").await, vec![3]);
        assert_eq!(numbers(&search, 1, 1, "😀").await, vec![3]);
        assert_eq!(numbers(&search, 1, 1, "𝔫𝔦").await, vec![3]);
        assert_eq!(numbers(&search, 1, 1, "\"lo ru\"").await, vec![1]);
        assert_eq!(numbers(&search, 1, 1, "rust hello").await, vec![1]);
        assert!(numbers(&search, 1, 1, "rustaceanz").await.is_empty());
        assert!(numbers(&search, 1, 1, "hello there").await.is_empty());
        assert!(numbers(&search, 1, 1, "\"ru lo\"").await.is_empty());
    }

    #[tokio::test]
    async fn a_capital_whose_lowercase_is_longer_is_found_in_either_case() {
        let dir = tempfile::tempdir().unwrap();
        let search = EmbeddedSearch::open(dir.path(), true).unwrap();
        search
            .index(&[message(1, 1, 1, "\u{130}stanbul", 0)])
            .await
            .unwrap();
        assert_eq!(numbers(&search, 1, 1, "i\u{307}stan").await, vec![1]);
        assert_eq!(numbers(&search, 1, 1, "\u{130}STAN").await, vec![1]);
    }

    #[tokio::test]
    async fn reindexing_replaces_the_previous_version() {
        let dir = tempfile::tempdir().unwrap();
        let search = EmbeddedSearch::open(dir.path(), true).unwrap();
        search
            .index(&[message(1, 1, 1, "first words", 0)])
            .await
            .unwrap();
        search
            .index(&[message(1, 1, 1, "second words", 5)])
            .await
            .unwrap();
        search
            .index(&[message(1, 1, 1, "second words", 5)])
            .await
            .unwrap();
        assert!(numbers(&search, 1, 1, "first").await.is_empty());
        let found = search.search(&in_chat("words", 0, 10)).await.unwrap();
        assert_eq!(found.messages.len(), 1);
        assert_eq!(found.messages[0].body, "second words");
    }

    #[tokio::test]
    async fn a_read_only_opener_sees_the_writers_commits() {
        let dir = tempfile::tempdir().unwrap();
        let writer = EmbeddedSearch::open(dir.path(), true).unwrap();
        let reader = EmbeddedSearch::open(dir.path(), false).unwrap();
        writer
            .index(&[message(1, 1, 7, "visible later", 0)])
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while numbers(&reader, 1, 1, "later").await.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the reader never saw the commit"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(reader.index(&[message(1, 1, 8, "x", 0)]).await.is_err());
    }

    /// Every page of a search, followed to the end: the messages found, and how many pages it took.
    async fn walk_request(
        search: &EmbeddedSearch,
        mut request: SearchRequest,
    ) -> (Vec<Message>, usize) {
        let (mut found, mut pages) = (Vec::new(), 0);
        loop {
            let page = search.search(&request).await.unwrap();
            pages += 1;
            found.extend(page.messages);
            match page.next {
                Some(next) => {
                    assert_ne!(Some(next), request.after, "the cursor moves on");
                    request.after = Some(next);
                }
                None => return (found, pages),
            }
        }
    }

    /// The numbers of every page of a search in chat 1 of application 1, and how many pages it took.
    async fn walk(search: &EmbeddedSearch, q: &str, limit: usize) -> (Vec<u64>, usize) {
        let (found, pages) = walk_request(search, in_chat(q, 0, limit)).await;
        (found.iter().map(|m| m.number).collect(), pages)
    }

    /// Thousands of bodies hold every trigram of the query without holding the query: the one real
    /// match after them is still found (candidates were once cut at 10,000 before the substring check).
    #[tokio::test]
    async fn a_match_behind_many_near_matches_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let search = EmbeddedSearch::open(dir.path(), true).unwrap();
        let mut messages: Vec<Message> = (2..=12_001)
            .map(|n| message(1, 1, n, "abc bcd", 0))
            .collect();
        // A long body ranks below the short near-matches, as a relevance cut would have ordered them.
        let long_match = format!("{} abcd", "y".repeat(500));
        messages.push(message(1, 1, 1, &long_match, 0));
        search.index(&messages).await.unwrap();
        assert_eq!(walk(&search, "abcd", 100).await.0, vec![1]);
    }

    /// One request reads a bounded amount of text: past it the page ends early with a cursor, and
    /// following the cursor reaches every match.
    #[tokio::test]
    async fn a_search_over_large_bodies_pages_through_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let search = EmbeddedSearch::open(dir.path(), true).unwrap();
        let large = "x".repeat(64 * 1024);
        // The large bodies come first in newest order when they are the newest.
        let mut messages: Vec<Message> = vec![
            message(1, 1, 1, "a needle", 0),
            message(1, 1, 2, "another needle", 0),
        ];
        messages.extend((3..=202).map(|n| message(1, 1, n, &large, 0)));
        search.index(&messages).await.unwrap();
        let first = search.search(&in_chat("ne", 0, 100)).await.unwrap();
        assert!(first.messages.is_empty(), "{:?}", first.next);
        assert!(matches!(first.next, Some(SearchCursor::Newest((_, _, n))) if n > 2));
        let (found, pages) = walk(&search, "ne", 100).await;
        assert_eq!(found, vec![2, 1]);
        assert!(
            pages >= 3,
            "200 bodies of 64 KiB take several budgets: {pages}"
        );
    }

    /// The cursor is a message number, so a walk goes on when the message a page ended on no longer
    /// matches.
    #[tokio::test]
    async fn the_walk_survives_an_edit_of_the_message_a_page_ended_on() {
        let dir = tempfile::tempdir().unwrap();
        let search = EmbeddedSearch::open(dir.path(), true).unwrap();
        search
            .index(&[
                message(1, 1, 1, "match one", 0),
                message(1, 1, 2, "match two", 0),
                message(1, 1, 3, "match three", 0),
            ])
            .await
            .unwrap();
        let first = search.search(&in_chat("match", 0, 1)).await.unwrap();
        assert_eq!(first.messages[0].number, 3);
        assert_eq!(first.next, Some(SearchCursor::Newest((0, 1, 3))));
        search
            .index(&[message(1, 1, 3, "edited away", 3)])
            .await
            .unwrap();
        let rest = search.search(&in_chat("match", 3, 10)).await.unwrap();
        assert_eq!(
            rest.messages.iter().map(|m| m.number).collect::<Vec<_>>(),
            vec![2, 1]
        );
        assert_eq!(rest.next, None);
    }

    fn created(app: AppId, chat: u64, number: u64, body: &str, ms: i64) -> Message {
        let at = DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap();
        Message {
            created_at: at,
            updated_at: at,
            ..message(app, chat, number, body, 0)
        }
    }

    /// Across an application, newest first is by creation, then chat, then number; messages created in
    /// the same millisecond are neither skipped nor repeated across pages, whatever the page size.
    #[tokio::test]
    async fn an_application_wide_search_pages_newest_first_through_ties() {
        let dir = tempfile::tempdir().unwrap();
        let search = EmbeddedSearch::open(dir.path(), true).unwrap();
        let mut messages = vec![created(2, 1, 1, "hit in another app", 50)];
        for chat in 1..=5 {
            for number in 1..=20 {
                // Many share a millisecond, across chats.
                let ms = (number as i64) / 4;
                messages.push(created(
                    1,
                    chat,
                    number,
                    &format!("hit {chat}/{number}"),
                    ms,
                ));
            }
        }
        messages.push(created(1, 6, 1, "miss", 100));
        search.index(&messages).await.unwrap();
        let mut expected: Vec<(i64, u64, u64)> = messages
            .iter()
            .filter(|m| m.application_id == 1 && m.body.starts_with("hit"))
            .map(|m| (m.created_at.timestamp_millis(), m.chat_number, m.number))
            .collect();
        expected.sort_unstable_by(|a, b| b.cmp(a));
        for limit in [1, 3, 7, 100] {
            let (found, _) = walk_request(&search, request(1, None, "hit", None, limit)).await;
            let keys: Vec<(i64, u64, u64)> = found
                .iter()
                .map(|m| (m.created_at.timestamp_millis(), m.chat_number, m.number))
                .collect();
            assert_eq!(keys, expected, "limit {limit}");
        }
    }

    /// In relevance order every match still comes once, the walk following the engine's order.
    #[tokio::test]
    async fn a_relevance_walk_reaches_every_match_once() {
        let dir = tempfile::tempdir().unwrap();
        let search = EmbeddedSearch::open(dir.path(), true).unwrap();
        let messages: Vec<Message> = (1..=50)
            .map(|n| {
                let body = format!(
                    "{} word {}",
                    "filler ".repeat(n as usize % 7),
                    "word ".repeat(n as usize % 3)
                );
                message(1, 1, n, &body, 0)
            })
            .collect();
        search.index(&messages).await.unwrap();
        let mut request = in_chat("word", 0, 6);
        request.order = SearchOrder::Relevance;
        let (found, pages) = walk_request(&search, request).await;
        let mut numbers: Vec<u64> = found.iter().map(|m| m.number).collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (1..=50).collect::<Vec<_>>());
        assert!(pages >= 9, "{pages} pages");
    }

    /// A deleted message's state removes its document; deleted chats and applications leave the index
    /// whole, and nothing else does.
    #[tokio::test]
    async fn deleted_messages_chats_and_applications_leave_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let search = EmbeddedSearch::open(dir.path(), true).unwrap();
        search
            .index(&[
                message(1, 1, 1, "tern one", 0),
                message(1, 1, 2, "tern two", 0),
                message(1, 2, 1, "tern elsewhere", 0),
                message(2, 1, 1, "tern in another app", 0),
            ])
            .await
            .unwrap();
        let tombstone = Message {
            deleted: true,
            ..message(1, 1, 2, "", 5)
        };
        search.index(&[tombstone]).await.unwrap();
        assert_eq!(numbers(&search, 1, 1, "tern").await, vec![1]);
        search.forget(&[(1, 1)], &[2]).await.unwrap();
        let across = |app| request(app, None, "tern", None, 10);
        let places = |page: SearchPage| {
            page.messages
                .iter()
                .map(|m| (m.chat_number, m.number))
                .collect::<Vec<_>>()
        };
        assert_eq!(places(search.search(&across(1)).await.unwrap()), [(2, 1)]);
        assert!(places(search.search(&across(2)).await.unwrap()).is_empty());
    }

    /// Too many open files kills tantivy's writer: the next write opens a new one, and what failed is
    /// indexed when it is retried.
    #[tokio::test]
    async fn the_index_recovers_after_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let search = EmbeddedSearch::open(dir.path(), true).unwrap();
        search
            .index(&[message(1, 1, 1, "before the failure", 0)])
            .await
            .unwrap();
        let open_files = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed to them; nextest runs
        // each test in a process of its own, so the lowered limit touches no other test.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
            let lowered = libc::rlimit {
                rlim_cur: open_files,
                rlim_max: limit.rlim_max,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lowered), 0);
        }
        let failed = search
            .index(&[message(1, 1, 2, "written during the failure", 0)])
            .await;
        // SAFETY: as above.
        unsafe {
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
        assert!(failed.is_err(), "the write cannot open its files");
        search
            .index(&[message(1, 1, 2, "written during the failure", 0)])
            .await
            .expect("a new writer takes the retry");
        search
            .index(&[message(1, 1, 3, "after the failure", 0)])
            .await
            .unwrap();
        assert_eq!(numbers(&search, 1, 1, "the failure").await, vec![3, 2, 1]);
        drop(search);
        let reopened = EmbeddedSearch::open(dir.path(), true).unwrap();
        assert_eq!(numbers(&reopened, 1, 1, "the failure").await, vec![3, 2, 1]);
    }
}
