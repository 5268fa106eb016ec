//! The embedded search engine (tantivy): standalone mode, and deployments without OpenSearch. Bodies are
//! indexed as lowercase character trigrams (with their frequencies, for ranking, but no positions, which
//! would double the indexing work): a body holding every trigram of a query of three characters or more
//! is a candidate. Shorter queries scan the chat's documents. Every candidate is checked against the body
//! before it is returned, so only real substring matches come back.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::DateTime;
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing,
    TextOptions, Value,
};
use tantivy::tokenizer::{Token, TokenStream, Tokenizer};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::domain::{AppId, Message};
use crate::error::{Backend, CoreError, CoreResult};
use crate::ports::{Search, SearchHit};

fn unavailable(e: impl std::fmt::Display) -> CoreError {
    CoreError::unavailable(Backend::Search, e)
}

#[derive(Clone, Copy)]
struct Fields {
    id: Field,
    chat: Field,
    app: Field,
    chat_number: Field,
    number: Field,
    body: Field,
    version: Field,
    created_at: Field,
    updated_at: Field,
}

/// The index writer's memory, on one indexing thread. The worker commits every few hundred documents,
/// and each commit starts a new segment whose term table is sized from this budget and zeroed and walked
/// whole: tantivy's smallest budget (and one thread, one segment a commit) keeps that per-commit work small.
const WRITER_MEMORY_BYTES: usize = 15_000_000;

/// The name the trigram tokenizer is registered under, in every process that opens the index.
const TRIGRAMS: &str = "chatsys_trigrams";

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
        app: builder.add_u64_field("application_id", STORED),
        chat_number: builder.add_u64_field("chat_number", STORED),
        number: builder.add_u64_field("number", STORED | FAST | INDEXED),
        body: builder.add_text_field("body", body),
        version: builder.add_u64_field("version", STORED),
        created_at: builder.add_i64_field("created_at", STORED),
        updated_at: builder.add_i64_field("updated_at", STORED),
    };
    (builder.build(), fields)
}

/// Splits a text into its lowercase character trigrams, in order. Registered with the index, so the
/// indexing threads tokenize the body themselves (a pre-tokenized value would travel through the
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
        self.chars.extend(text.chars().flat_map(char::to_lowercase));
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

/// Lowercase character trigrams of a text, in order.
fn trigrams(text: &str) -> Vec<String> {
    let mut tokenizer = TrigramTokenizer::default();
    let mut stream = tokenizer.token_stream(text);
    let mut grams = Vec::new();
    while stream.advance() {
        grams.push(stream.token().text.clone());
    }
    grams
}

fn chat_key(app: AppId, chat: u64) -> String {
    format!("{app}:{chat}")
}

pub struct EmbeddedSearch {
    reader: IndexReader,
    writer: Option<Mutex<IndexWriter>>,
    fields: Fields,
}

impl EmbeddedSearch {
    /// Opens (or creates) the index in `dir`. Only one process may write; others open it read-only and
    /// see each commit within about half a second.
    pub fn open(dir: &Path, writable: bool) -> CoreResult<Arc<Self>> {
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
            Some(Mutex::new(
                index
                    .writer_with_num_threads(1, WRITER_MEMORY_BYTES)
                    .map_err(unavailable)?,
            ))
        } else {
            None
        };
        Ok(Arc::new(EmbeddedSearch {
            reader,
            writer,
            fields,
        }))
    }

    fn document(&self, m: &Message) -> TantivyDocument {
        let f = self.fields;
        let mut doc = TantivyDocument::default();
        doc.add_text(
            f.id,
            format!("{}:{}:{}", m.application_id, m.chat_number, m.number),
        );
        doc.add_text(f.chat, chat_key(m.application_id, m.chat_number));
        doc.add_u64(f.app, m.application_id);
        doc.add_u64(f.chat_number, m.chat_number);
        doc.add_u64(f.number, m.number);
        doc.add_text(f.body, &m.body);
        doc.add_u64(f.version, m.version);
        doc.add_i64(f.created_at, m.created_at.timestamp_micros());
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
        })
    }

    fn search_blocking(
        &self,
        app: AppId,
        chat: u64,
        query: &str,
        window: usize,
    ) -> CoreResult<Vec<SearchHit>> {
        let f = self.fields;
        let needle: String = query.chars().flat_map(char::to_lowercase).collect();
        let in_chat: Box<dyn Query> = Box::new(TermQuery::new(
            Term::from_field_text(f.chat, &chat_key(app, chat)),
            IndexRecordOption::Basic,
        ));
        let mut grams = trigrams(query);
        let (query, limit): (Box<dyn Query>, usize) = if grams.is_empty() {
            (in_chat, usize::MAX)
        } else {
            // Every trigram of the query must be in the body; the substring check below does the rest.
            grams.sort_unstable();
            grams.dedup();
            let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, in_chat)];
            clauses.extend(grams.iter().map(|g| {
                let term = TermQuery::new(
                    Term::from_field_text(f.body, g),
                    IndexRecordOption::WithFreqs,
                );
                (Occur::Must, Box::new(term) as Box<dyn Query>)
            }));
            (Box::new(BooleanQuery::new(clauses)), window)
        };
        let searcher = self.reader.searcher();
        let top = if limit == usize::MAX {
            // Short queries: the chat's documents in number order, filtered below.
            let count = searcher
                .search(&query, &tantivy::collector::Count)
                .map_err(unavailable)?;
            searcher
                .search(
                    &query,
                    &TopDocs::with_limit(count.max(1))
                        .order_by_fast_field::<u64>("number", tantivy::Order::Asc),
                )
                .map_err(unavailable)?
                .into_iter()
                .map(|(_, address)| (0.0f32, address))
                .collect::<Vec<_>>()
        } else {
            searcher
                .search(&query, &TopDocs::with_limit(limit.max(1)).order_by_score())
                .map_err(unavailable)?
        };
        let mut hits = Vec::new();
        for (score, address) in top {
            let doc: TantivyDocument = searcher.doc(address).map_err(unavailable)?;
            if let Some(message) = self.message(&doc)
                && message
                    .body
                    .chars()
                    .flat_map(char::to_lowercase)
                    .collect::<String>()
                    .contains(&needle)
            {
                hits.push(SearchHit { message, score });
            }
            if hits.len() >= window {
                break;
            }
        }
        hits.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(a.message.number.cmp(&b.message.number))
        });
        Ok(hits)
    }
}

#[async_trait]
impl Search for Arc<EmbeddedSearch> {
    async fn ping(&self) -> CoreResult<()> {
        Ok(())
    }

    async fn index(&self, messages: &[Message]) -> CoreResult<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let this = self.clone();
        let messages = messages.to_vec();
        tokio::task::spawn_blocking(move || {
            let writer = this
                .writer
                .as_ref()
                .ok_or_else(|| unavailable("this process opened the index read-only"))?;
            let mut writer = writer
                .lock()
                .map_err(|_| unavailable("index writer poisoned"))?;
            for m in &messages {
                let id = format!("{}:{}:{}", m.application_id, m.chat_number, m.number);
                writer.delete_term(Term::from_field_text(this.fields.id, &id));
                writer.add_document(this.document(m)).map_err(unavailable)?;
            }
            writer.commit().map_err(unavailable)?;
            this.reader.reload().map_err(unavailable)
        })
        .await
        .map_err(unavailable)?
    }

    async fn search(
        &self,
        app: AppId,
        chat: u64,
        query: &str,
        window: usize,
    ) -> CoreResult<Vec<SearchHit>> {
        let this = self.clone();
        let query = query.to_string();
        tokio::task::spawn_blocking(move || this.search_blocking(app, chat, &query, window))
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
        }
    }

    async fn numbers(search: &Arc<EmbeddedSearch>, app: AppId, chat: u64, q: &str) -> Vec<u64> {
        search
            .search(app, chat, q, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.message.number)
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
        assert_eq!(numbers(&search, 1, 1, "o").await, vec![1, 2]);
        assert_eq!(numbers(&search, 1, 1, "本語").await, vec![3]);
        assert_eq!(numbers(&search, 1, 1, "😀").await, vec![3]);
        assert_eq!(numbers(&search, 1, 1, "𝔫𝔦").await, vec![3]);
        assert_eq!(numbers(&search, 1, 1, "lo ru").await, vec![1]);
        assert!(numbers(&search, 1, 1, "rustaceanz").await.is_empty());
        assert!(numbers(&search, 1, 1, "hello there").await.is_empty());
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
        let hits = search.search(1, 1, "words", 10).await.unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].message.body, "second words");
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
}
