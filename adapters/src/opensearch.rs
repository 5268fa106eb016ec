//! OpenSearch adapter of the search port: the deployment's search engine.
//!
//! The index keeps each message once, under the id `{application_id}:{chat_number}:{number}`, with the
//! message's version as an external version, so re-indexing is harmless and an older state never replaces
//! a newer one. Searches compare folded text ([`fold`]), folded here, not by an analyzer: the cluster
//! needs no plugin, and the embedded engine folds with the same function, so both give the same answers.
//! `folded` holds the folded body as character trigrams: a term of three characters or more is a phrase
//! of trigrams, which matches exactly the bodies that contain it. The subfield `folded.short` holds the
//! single characters and pairs of characters, so one- and two-character terms are a single term lookup
//! and also match anywhere, in bodies of any length. `body` is kept as written, not indexed.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use opensearch::http::response::Response;
use opensearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use opensearch::http::{StatusCode, Url};
use opensearch::indices::{IndicesCreateParts, IndicesExistsParts};
use opensearch::params::{Conflicts, VersionType};
use opensearch::{
    BulkOperation, BulkOperations, BulkParts, DeleteByQueryParts, OpenSearch, SearchParts,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use chatsys_core::domain::{AppId, Message};
use chatsys_core::error::{Backend, CoreError, CoreResult};
use chatsys_core::plan::ChatKey;
use chatsys_core::ports::{IndexRefusal, Search, SearchPage};
use chatsys_core::search_text::{
    RELEVANCE_WINDOW, SearchCursor, SearchOrder, SearchRequest, fold, newest_key,
};

/// The index of this release's documents (folded text): a new name, since a mapping cannot change in
/// place.
pub const DEFAULT_INDEX: &str = "chatsys-messages-v2";

/// Terms this long or longer go through the trigram field; shorter ones through `folded.short`.
const TRIGRAM: usize = 3;
/// Text sent in one bulk request at most (each body twice: as written and folded): a batch of the largest bodies goes in several requests,
/// well under OpenSearch's request size limit (100 MB by default) and its indexing queue's patience.
const BULK_MAX_BYTES: usize = 8 << 20;
/// A cluster that stops answering turns into an error the worker retries and the API answers with 503.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A batch of large bodies takes a while to analyze; a retry after a timeout is harmless (versions).
const BULK_TIMEOUT: Duration = Duration::from_secs(60);

fn unavailable(detail: impl fmt::Display) -> CoreError {
    CoreError::unavailable(Backend::Search, detail)
}

/// A failed request with its causes: the useful part ("Connection refused") sits deep in the chain.
fn failed_request(action: &str, err: opensearch::Error) -> CoreError {
    let mut detail = format!("{action}: {err}");
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    unavailable(detail)
}

#[derive(Clone)]
pub struct OpenSearchIndex {
    client: OpenSearch,
    index: String,
}

impl fmt::Debug for OpenSearchIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenSearchIndex")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl OpenSearchIndex {
    /// Connects to the cluster at `url` and creates `index` with its mapping unless it exists.
    pub async fn connect(url: &str, index: &str) -> CoreResult<Self> {
        let search = Self::new(url, index)?;
        search.ensure_index().await?;
        Ok(search)
    }

    fn new(url: &str, index: &str) -> CoreResult<Self> {
        let mut url =
            Url::parse(url).map_err(|e| unavailable(format!("invalid OpenSearch URL: {e}")))?;
        // Request paths are joined onto the URL: without the slash, a path prefix would be replaced.
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        let transport = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| unavailable(format!("cannot build the OpenSearch client: {e}")))?;
        Ok(OpenSearchIndex {
            client: OpenSearch::new(transport),
            index: index.to_string(),
        })
    }

    async fn ensure_index(&self) -> CoreResult<()> {
        let action = format!("checking index {}", self.index);
        let exists = self
            .client
            .indices()
            .exists(IndicesExistsParts::Index(&[&self.index]))
            .send()
            .await
            .map_err(|e| failed_request(&action, e))?;
        match exists.status_code() {
            StatusCode::OK => return Ok(()),
            StatusCode::NOT_FOUND => {}
            _ => return Err(refusal(&action, exists).await),
        }

        let action = format!("creating index {}", self.index);
        let created = self
            .client
            .indices()
            .create(IndicesCreateParts::Index(&self.index))
            .body(index_definition())
            .send()
            .await
            .map_err(|e| failed_request(&action, e))?;
        if created.status_code().is_success() {
            return Ok(());
        }
        let status = created.status_code();
        let body = created
            .text()
            .await
            .map_err(|e| failed_request(&action, e))?;
        // Another replica starting at the same moment created it first: OpenSearch answers 400 with
        // the error type `resource_already_exists_exception` (server/src/main/java/org/opensearch/
        // ResourceAlreadyExistsException.java, status BAD_REQUEST; the type is the class's name in
        // snake case, OpenSearchException#getExceptionName).
        if status == StatusCode::BAD_REQUEST
            && error_type(&body).as_deref() == Some("resource_already_exists_exception")
        {
            return Ok(());
        }
        Err(unavailable(format!(
            "{action}: OpenSearch answered {status}: {}",
            error_summary(&body)
        )))
    }
}

/// Settings and mapping of the message index.
fn index_definition() -> Value {
    json!({
        "settings": {
            "index": {
                // The largest gap between min_gram and max_gram of the tokenizers below.
                "max_ngram_diff": 1,
                "analysis": {
                    "tokenizer": {
                        "chatsys_trigram": { "type": "ngram", "min_gram": 3, "max_gram": 3, "token_chars": [] },
                        "chatsys_short_gram": { "type": "ngram", "min_gram": 1, "max_gram": 2, "token_chars": [] }
                    },
                    // No filter: the text comes folded, and the query's terms too.
                    "analyzer": {
                        "chatsys_trigrams": { "type": "custom", "tokenizer": "chatsys_trigram" },
                        "chatsys_short_grams": { "type": "custom", "tokenizer": "chatsys_short_gram" },
                        "chatsys_whole": { "type": "custom", "tokenizer": "keyword" }
                    }
                }
            }
        },
        "mappings": {
            "dynamic": "strict",
            // The folded text is for finding; `_source` keeps the body as written (docs.opensearch.org,
            // field-types/metadata-fields/source: `excludes` leaves fields out of the stored source).
            "_source": { "excludes": ["folded"] },
            "properties": {
                "application_id": { "type": "long" },
                "chat_number": { "type": "long" },
                "number": { "type": "long" },
                "version": { "type": "long" },
                "body": { "type": "text", "index": false },
                "folded": {
                    "type": "text",
                    "analyzer": "chatsys_trigrams",
                    "fields": {
                        "short": {
                            "type": "text",
                            "analyzer": "chatsys_short_grams",
                            // The whole term is the one gram to look up.
                            "search_analyzer": "chatsys_whole",
                            "index_options": "docs",
                            "norms": false
                        }
                    }
                },
                "created_at": { "type": "date" },
                "updated_at": { "type": "date" }
            }
        }
    })
}

/// A message as stored in the index; `_source` gives it back whole.
#[derive(Debug, Serialize, Deserialize)]
struct Document<'a> {
    application_id: AppId,
    chat_number: u64,
    number: u64,
    body: Cow<'a, str>,
    /// Sent, never given back (`_source` leaves it out).
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    folded: Option<String>,
    version: u64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl<'a> From<&'a Message> for Document<'a> {
    fn from(m: &'a Message) -> Self {
        Document {
            application_id: m.application_id,
            chat_number: m.chat_number,
            number: m.number,
            body: Cow::Borrowed(&m.body),
            folded: Some(fold(&m.body)),
            version: m.version,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

impl From<Document<'_>> for Message {
    fn from(d: Document<'_>) -> Self {
        Message {
            application_id: d.application_id,
            chat_number: d.chat_number,
            number: d.number,
            body: d.body.into_owned(),
            version: d.version,
            created_at: d.created_at,
            updated_at: d.updated_at,
            deleted: false,
        }
    }
}

fn document_id(m: &Message) -> String {
    format!("{}:{}:{}", m.application_id, m.chat_number, m.number)
}

/// External versions must be positive and grow with every edit; a message's versions start at 0.
fn external_version(m: &Message) -> CoreResult<i64> {
    m.version
        .checked_add(1)
        .and_then(|v| i64::try_from(v).ok())
        .ok_or_else(|| {
            CoreError::Rejected(format!(
                "message {} has an unindexable version {}",
                document_id(m),
                m.version
            ))
        })
}

#[derive(Deserialize)]
struct BulkResponse {
    /// One entry per action, in request order, keyed by the action ("index").
    items: Vec<HashMap<String, BulkItem>>,
}

#[derive(Deserialize)]
struct BulkItem {
    status: u16,
    error: Option<Value>,
}

/// Reads a bulk answer: every document is indexed, already holds the same or a newer version (409), or
/// was refused for good (returned). A document OpenSearch could not take now (429, 5xx) makes the whole
/// call transient: re-sending the others is harmless (versions).
fn check_bulk(sent: &[&Message], response: BulkResponse) -> CoreResult<Vec<IndexRefusal>> {
    if response.items.len() != sent.len() {
        return Err(unavailable(format!(
            "malformed OpenSearch bulk response: {} items for {} documents",
            response.items.len(),
            sent.len()
        )));
    }
    let mut refused = Vec::new();
    let mut transient = Vec::new();
    for (message, entry) in sent.iter().zip(response.items) {
        let Some(item) = entry.into_values().next() else {
            return Err(unavailable(
                "malformed OpenSearch bulk response: an empty item",
            ));
        };
        let conflict = item.status == StatusCode::CONFLICT.as_u16();
        // A delete of a document not in the index (never indexed, or deleted already) is done.
        let absent = message.deleted && item.status == StatusCode::NOT_FOUND.as_u16();
        if (200..300).contains(&item.status) || conflict || absent {
            continue;
        }
        let reason = item
            .error
            .as_ref()
            .map(error_object_summary)
            .unwrap_or_else(|| "no reason given".to_string());
        let described = format!("{} ({}: {reason})", document_id(message), item.status);
        if item.status == StatusCode::TOO_MANY_REQUESTS.as_u16() || item.status >= 500 {
            transient.push(described);
        } else {
            refused.push(IndexRefusal {
                key: (message.application_id, message.chat_number, message.number),
                reason: format!("OpenSearch refused the document: {described}"),
            });
        }
    }
    match transient.as_slice() {
        [] => Ok(refused),
        [first, ..] => Err(unavailable(format!(
            "OpenSearch could not index {} of {} documents now; first: {first}",
            transient.len(),
            sent.len()
        ))),
    }
}

/// The request's terms in its scope, after its cursor, in its order; one more than `limit`, to know
/// whether a next page exists.
fn search_request(request: &SearchRequest) -> Value {
    let scope = request.scope;
    let must: Vec<Value> = request
        .terms
        .terms()
        .iter()
        .map(|term| {
            if term.chars().count() >= TRIGRAM {
                json!({ "match_phrase": { "folded": { "query": term } } })
            } else {
                json!({ "match": { "folded.short": { "query": term } } })
            }
        })
        .collect();
    let mut filter = vec![json!({ "term": { "application_id": scope.app } })];
    if let Some(chat) = scope.chat {
        filter.push(json!({ "term": { "chat_number": chat } }));
    }
    let mut body = json!({
        "size": request.limit + 1,
        "track_total_hits": false,
        "query": { "bool": { "filter": filter, "must": must } }
    });
    match request.order {
        // A `date` is kept to the millisecond and sorts by it (docs.opensearch.org, mappings/
        // supported-field-types/dates: "A date stored in millisecond resolution"), as the cursor keeps it.
        SearchOrder::Newest => {
            body["sort"] = match scope.chat {
                Some(_) => json!([{ "number": "desc" }]),
                None => {
                    json!([{ "created_at": "desc" }, { "chat_number": "desc" }, { "number": "desc" }])
                }
            };
            if let Some(SearchCursor::Newest((ms, chat, number))) = request.after {
                body["search_after"] = match scope.chat {
                    Some(_) => json!([number]),
                    None => json!([ms, chat, number]),
                };
            }
        }
        SearchOrder::Relevance => {
            if let Some(SearchCursor::Skip(skip)) = request.after {
                body["from"] = json!(skip);
            }
        }
    }
    body
}

/// Every document of these chats and applications. With `conflicts=proceed`, a document indexed
/// meanwhile is left to the next call rather than failing this one (docs.opensearch.org,
/// api-reference/document-apis/delete-by-query).
fn forget_request(chats: &[ChatKey], applications: &[AppId]) -> Value {
    let mut should: Vec<Value> = chats
        .iter()
        .map(|(app, chat)| {
            json!({ "bool": { "filter": [
                { "term": { "application_id": app } },
                { "term": { "chat_number": chat } }
            ] } })
        })
        .collect();
    if !applications.is_empty() {
        should.push(json!({ "terms": { "application_id": applications } }));
    }
    json!({ "query": { "bool": { "should": should, "minimum_should_match": 1 } } })
}

#[derive(Deserialize)]
struct SearchResponse {
    hits: SearchHits,
}

#[derive(Deserialize)]
struct SearchHits {
    hits: Vec<FoundDocument>,
}

#[derive(Deserialize)]
struct FoundDocument {
    #[serde(rename = "_source")]
    source: Document<'static>,
}

/// Passes a successful answer through; turns any other into an error naming the status and reason.
async fn expect_success(
    action: &str,
    sent: Result<Response, opensearch::Error>,
) -> CoreResult<Response> {
    let response = sent.map_err(|e| failed_request(action, e))?;
    if response.status_code().is_success() {
        Ok(response)
    } else {
        Err(refusal(action, response).await)
    }
}

/// Read as text, not with `Response::exception`: a proxy in front of OpenSearch may answer with a body
/// that is not JSON at all, and its first words are still the best reason to give.
async fn refusal(action: &str, response: Response) -> CoreError {
    let status = response.status_code();
    match response.text().await {
        Ok(body) => unavailable(format!(
            "{action}: OpenSearch answered {status}: {}",
            error_summary(&body)
        )),
        Err(e) => failed_request(&format!("{action}: OpenSearch answered {status}"), e),
    }
}

async fn read_json<T: DeserializeOwned>(action: &str, response: Response) -> CoreResult<T> {
    response
        .json()
        .await
        .map_err(|e| unavailable(format!("{action}: malformed OpenSearch response: {e}")))
}

fn error_type(body: &str) -> Option<String> {
    let parsed: Value = serde_json::from_str(body).ok()?;
    parsed.pointer("/error/type")?.as_str().map(str::to_string)
}

/// `type: reason` from an OpenSearch error body, or the start of the body when it is not one.
fn error_summary(body: &str) -> String {
    match serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").cloned())
    {
        Some(error) => error_object_summary(&error),
        None => body.chars().take(200).collect(),
    }
}

fn error_object_summary(error: &Value) -> String {
    match error {
        Value::String(text) => text.clone(),
        _ => {
            let field = |name| error.get(name).and_then(Value::as_str).unwrap_or("?");
            format!("{}: {}", field("type"), field("reason"))
        }
    }
}

#[async_trait]
impl Search for OpenSearchIndex {
    async fn ping(&self) -> CoreResult<()> {
        expect_success("pinging OpenSearch", self.client.ping().send().await)
            .await
            .map(drop)
    }

    async fn index(&self, messages: &[Message]) -> CoreResult<Vec<IndexRefusal>> {
        let mut refused = Vec::new();
        let mut rest = messages;
        while !rest.is_empty() {
            let mut bytes = 0;
            let split = rest
                .iter()
                .position(|m| {
                    // The body goes twice: as written, and folded.
                    bytes += 2 * m.body.len();
                    bytes > BULK_MAX_BYTES
                })
                .map_or(rest.len(), |at| at.max(1));
            let (bulk, next) = rest.split_at(split);
            refused.extend(self.bulk_index(bulk).await?);
            rest = next;
        }
        Ok(refused)
    }

    async fn forget(&self, chats: &[ChatKey], applications: &[AppId]) -> CoreResult<()> {
        if chats.is_empty() && applications.is_empty() {
            return Ok(());
        }
        let action = "removing deleted chats' messages";
        let sent = self
            .client
            .delete_by_query(DeleteByQueryParts::Index(&[&self.index]))
            .conflicts(Conflicts::Proceed)
            .body(forget_request(chats, applications))
            .send()
            .await;
        expect_success(action, sent).await.map(drop)
    }

    async fn search(&self, request: &SearchRequest) -> CoreResult<SearchPage> {
        if request.limit == 0 {
            return Ok(SearchPage::default());
        }
        let action = "searching";
        let sent = self
            .client
            .search(SearchParts::Index(&[&self.index]))
            .body(search_request(request))
            .send()
            .await;
        let found: SearchResponse = read_json(action, expect_success(action, sent).await?).await?;
        let mut messages: Vec<Message> = found
            .hits
            .hits
            .into_iter()
            .map(|hit| hit.source.into())
            .collect();
        if messages.len() <= request.limit {
            return Ok(SearchPage {
                messages,
                next: None,
            });
        }
        messages.truncate(request.limit);
        let next = match request.order {
            SearchOrder::Newest => messages.last().map(|m| {
                SearchCursor::Newest(newest_key(
                    request.scope,
                    m.created_at.timestamp_millis(),
                    m.chat_number,
                    m.number,
                ))
            }),
            SearchOrder::Relevance => {
                let skip = match request.after {
                    Some(SearchCursor::Skip(skip)) => skip,
                    _ => 0,
                } + request.limit as u64;
                (skip < RELEVANCE_WINDOW).then_some(SearchCursor::Skip(skip))
            }
        };
        Ok(SearchPage { messages, next })
    }
}

impl OpenSearchIndex {
    /// One bulk request; a message whose version cannot be indexed is refused, not sent.
    async fn bulk_index(&self, messages: &[Message]) -> CoreResult<Vec<IndexRefusal>> {
        let action = "bulk indexing";
        let mut refused = Vec::new();
        let mut sent = Vec::with_capacity(messages.len());
        let mut operations = BulkOperations::new();
        for message in messages {
            let version = match external_version(message) {
                Ok(version) => version,
                Err(e) => {
                    refused.push(IndexRefusal {
                        key: (message.application_id, message.chat_number, message.number),
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            // A delete carries the tombstone's version too, so an older state indexed late is refused
            // (OpenSearch keeps a deleted document's version for `index.gc_deletes`, 60 s by default:
            // docs.opensearch.org, install-and-configure/configuring-opensearch/index-settings).
            let pushed = if message.deleted {
                operations.push(
                    BulkOperation::<()>::delete(document_id(message))
                        .version(version)
                        .version_type(VersionType::External),
                )
            } else {
                operations.push(
                    BulkOperation::index(Document::from(message))
                        .id(document_id(message))
                        .version(version)
                        .version_type(VersionType::External),
                )
            };
            pushed.map_err(|e| failed_request(action, e))?;
            sent.push(message);
        }
        if sent.is_empty() {
            return Ok(refused);
        }
        let answer = self
            .client
            .bulk(BulkParts::Index(&self.index))
            .request_timeout(BULK_TIMEOUT)
            .body(vec![operations])
            .send()
            .await;
        let response = expect_success(action, answer).await?;
        refused.extend(check_bulk(&sent, read_json(action, response).await?)?);
        Ok(refused)
    }
}

#[cfg(test)]
mod tests {
    //! Wire-level tests against an in-test HTTP server that records each request and answers like
    //! OpenSearch, plus one test against a real cluster when `OPENSEARCH_URL` is set.

    use std::sync::{Arc, Mutex};

    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, StatusCode as HttpStatus, Uri, header};

    use super::*;
    use chatsys_core::search_text::SearchScope;

    const INDEX: &str = "test-messages";

    #[derive(Debug, Clone)]
    struct Recorded {
        method: Method,
        path: String,
        query: Option<String>,
        body: Bytes,
    }

    impl Recorded {
        fn is(&self, method: Method, path: &str) -> bool {
            self.method == method && self.path == path
        }

        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).expect("a JSON request body")
        }

        fn ndjson(&self) -> Vec<Value> {
            let text = std::str::from_utf8(&self.body).expect("a UTF-8 request body");
            // OpenSearch refuses a bulk body whose last line has no newline ("The bulk request must
            // be terminated by a newline"): server/src/main/java/org/opensearch/action/bulk/
            // BulkRequestParser.java, and the Bulk API's page of docs.opensearch.org.
            assert!(
                text.ends_with('\n'),
                "a bulk body must end with a newline: {text:?}"
            );
            text.lines()
                .map(|line| serde_json::from_str(line).expect("one JSON value per line"))
                .collect()
        }
    }

    /// An HTTP server on a free local port that answers every request with `respond`.
    struct FakeCluster {
        url: String,
        requests: Arc<Mutex<Vec<Recorded>>>,
    }

    impl FakeCluster {
        async fn start(
            respond: impl Fn(&Recorded) -> (u16, String) + Send + Sync + 'static,
        ) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let requests = Arc::new(Mutex::new(Vec::new()));
            let respond = Arc::new(respond);
            let recorder = requests.clone();
            let app = axum::Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| {
                let (recorder, respond) = (recorder.clone(), respond.clone());
                async move {
                    let recorded = Recorded {
                        method,
                        path: uri.path().to_string(),
                        query: uri.query().map(str::to_string),
                        body,
                    };
                    let (status, answer) = respond(&recorded);
                    recorder.lock().unwrap().push(recorded);
                    let mut headers = HeaderMap::new();
                    headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
                    (HttpStatus::from_u16(status).unwrap(), headers, answer)
                }
            });
            // Bulk requests are as large as OpenSearch takes, well past axum's default body limit.
            let app = app.layer(axum::extract::DefaultBodyLimit::disable());
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            FakeCluster { url, requests }
        }

        /// A cluster where the test index exists; `respond` answers everything else.
        async fn with_index(
            respond: impl Fn(&Recorded) -> (u16, String) + Send + Sync + 'static,
        ) -> Self {
            Self::start(move |r| {
                if r.is(Method::HEAD, "/test-messages") {
                    (200, String::new())
                } else {
                    respond(r)
                }
            })
            .await
        }

        async fn connect(&self) -> CoreResult<OpenSearchIndex> {
            OpenSearchIndex::connect(&self.url, INDEX).await
        }

        fn requests(&self) -> Vec<Recorded> {
            self.requests.lock().unwrap().clone()
        }

        /// The requests after the index check that `connect` makes.
        fn requests_after_connect(&self) -> Vec<Recorded> {
            let requests = self.requests();
            assert!(
                requests[0].is(Method::HEAD, "/test-messages"),
                "connect checks the index first: {requests:?}"
            );
            requests[1..].to_vec()
        }
    }

    fn time(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn message(app: AppId, chat: u64, number: u64, body: &str, version: u64) -> Message {
        Message {
            application_id: app,
            chat_number: chat,
            number,
            body: body.to_string(),
            version,
            created_at: time("2026-11-28T01:02:03.456789Z"),
            updated_at: time("2026-11-28T04:05:06.000001Z"),
            deleted: false,
        }
    }

    /// A newest-first search of chat 2 of application 7, after message `after`.
    fn in_chat(q: &str, after: Option<u64>, limit: usize) -> SearchRequest {
        SearchRequest {
            scope: chatsys_core::search_text::SearchScope {
                app: 7,
                chat: Some(2),
            },
            terms: chatsys_core::search_text::SearchTerms::parse(q).unwrap(),
            order: SearchOrder::Newest,
            after: after.map(|n| SearchCursor::Newest((0, 2, n))),
            limit,
        }
    }

    fn unavailable_detail<T: fmt::Debug>(result: CoreResult<T>) -> String {
        match result {
            Err(CoreError::Unavailable {
                backend: Backend::Search,
                detail,
            }) => detail,
            other => panic!("expected search to be unavailable, got {other:?}"),
        }
    }

    fn bulk_answer(items: &[(&str, u16, Option<Value>)]) -> String {
        let items: Vec<Value> = items
            .iter()
            .map(|(id, status, error)| {
                let mut item = json!({ "_index": INDEX, "_id": id, "status": status });
                if let Some(error) = error {
                    item["error"] = error.clone();
                }
                json!({ "index": item })
            })
            .collect();
        json!({ "took": 4, "errors": items.iter().any(|i| i["index"].get("error").is_some()), "items": items })
            .to_string()
    }

    fn source(number: u64, body: &str, version: u64) -> Value {
        json!({
            "application_id": 7, "chat_number": 2, "number": number, "body": body, "version": version,
            "created_at": "2026-11-28T01:02:03.456789Z", "updated_at": "2026-11-28T04:05:06.000001Z"
        })
    }

    fn search_answer(hits: &[(u64, &str, f32)]) -> String {
        let hits: Vec<Value> = hits
            .iter()
            .map(|(number, body, score)| {
                json!({
                    "_index": INDEX, "_id": format!("7:2:{number}"), "_score": score,
                    "_source": source(*number, body, 0), "sort": [score, number]
                })
            })
            .collect();
        json!({ "took": 2, "timed_out": false, "hits": { "max_score": null, "hits": hits } })
            .to_string()
    }

    #[tokio::test]
    async fn connect_creates_a_missing_index_with_trigram_and_short_gram_analyzers() {
        let cluster = FakeCluster::start(|r| match r.method {
            Method::HEAD => (404, String::new()),
            _ => (
                200,
                json!({ "acknowledged": true, "index": INDEX }).to_string(),
            ),
        })
        .await;
        cluster.connect().await.unwrap();

        let requests = cluster.requests();
        assert_eq!(requests.len(), 2, "{requests:?}");
        assert!(requests[0].is(Method::HEAD, "/test-messages"));
        assert!(requests[1].is(Method::PUT, "/test-messages"));
        let definition = requests[1].json();
        let analysis = &definition["settings"]["index"]["analysis"];
        assert_eq!(
            analysis["tokenizer"]["chatsys_trigram"],
            json!({ "type": "ngram", "min_gram": 3, "max_gram": 3, "token_chars": [] })
        );
        assert_eq!(
            analysis["tokenizer"]["chatsys_short_gram"],
            json!({ "type": "ngram", "min_gram": 1, "max_gram": 2, "token_chars": [] })
        );
        assert_eq!(definition["settings"]["index"]["max_ngram_diff"], 1);
        for analyzer in ["chatsys_trigrams", "chatsys_short_grams", "chatsys_whole"] {
            assert_eq!(
                analysis["analyzer"][analyzer].get("filter"),
                None,
                "{analyzer}: the text comes folded"
            );
        }
        assert_eq!(
            analysis["analyzer"]["chatsys_whole"]["tokenizer"],
            "keyword"
        );

        let mappings = &definition["mappings"];
        assert_eq!(mappings["dynamic"], "strict");
        let fields = &mappings["properties"];
        for scope in ["application_id", "chat_number", "number", "version"] {
            assert_eq!(fields[scope]["type"], "long", "{scope}");
        }
        assert_eq!(fields["body"], json!({ "type": "text", "index": false }));
        assert_eq!(fields["folded"]["type"], "text");
        assert_eq!(fields["folded"]["analyzer"], "chatsys_trigrams");
        let short = &fields["folded"]["fields"]["short"];
        assert_eq!(short["analyzer"], "chatsys_short_grams");
        assert_eq!(short["search_analyzer"], "chatsys_whole");
        assert_eq!(fields["created_at"]["type"], "date");
        assert_eq!(fields["updated_at"]["type"], "date");
        assert_eq!(
            mappings["_source"],
            json!({ "excludes": ["folded"] }),
            "documents come back as written, without their folded text"
        );
    }

    #[tokio::test]
    async fn connect_leaves_an_existing_index_alone() {
        let cluster = FakeCluster::with_index(|_| (500, String::new())).await;
        cluster.connect().await.unwrap();
        assert_eq!(cluster.requests_after_connect().len(), 0);
    }

    #[tokio::test]
    async fn connect_accepts_an_index_another_replica_just_created() {
        let cluster = FakeCluster::start(|r| match r.method {
            Method::HEAD => (404, String::new()),
            _ => (
                400,
                json!({ "error": { "type": "resource_already_exists_exception",
                    "reason": "index [test-messages/abc] already exists" }, "status": 400 })
                .to_string(),
            ),
        })
        .await;
        cluster.connect().await.unwrap();
        assert_eq!(cluster.requests().len(), 2);
    }

    #[tokio::test]
    async fn connect_reports_why_the_index_was_refused() {
        let cluster = FakeCluster::start(|r| match r.method {
            Method::HEAD => (404, String::new()),
            _ => (
                400,
                json!({ "error": { "type": "illegal_argument_exception",
                    "reason": "unknown tokenizer type [ngram]" }, "status": 400 })
                .to_string(),
            ),
        })
        .await;
        let detail = unavailable_detail(cluster.connect().await);
        assert!(detail.contains("creating index test-messages"), "{detail}");
        assert!(detail.contains("400"), "{detail}");
        assert!(
            detail.contains("illegal_argument_exception: unknown tokenizer type [ngram]"),
            "{detail}"
        );
    }

    #[tokio::test]
    async fn connect_keeps_a_path_prefix_of_the_url() {
        let cluster = FakeCluster::start(|_| (200, String::new())).await;
        OpenSearchIndex::connect(&format!("{}/search", cluster.url), INDEX)
            .await
            .unwrap();
        assert!(
            cluster.requests()[0].is(Method::HEAD, "/search/test-messages"),
            "{:?}",
            cluster.requests()
        );
    }

    #[tokio::test]
    async fn index_sends_one_bulk_request_with_ids_and_external_versions() {
        let cluster = FakeCluster::with_index(|_| {
            (
                200,
                bulk_answer(&[("7:2:5", 201, None), ("7:3:1", 200, None)]),
            )
        })
        .await;
        let search = cluster.connect().await.unwrap();
        search
            .index(&[
                message(7, 2, 5, "Hello Rustaceans", 0),
                message(7, 3, 1, "edited\nbody", 41),
            ])
            .await
            .unwrap();

        let requests = cluster.requests_after_connect();
        assert_eq!(requests.len(), 1, "{requests:?}");
        assert!(
            requests[0].is(Method::POST, "/test-messages/_bulk"),
            "{requests:?}"
        );
        let lines = requests[0].ndjson();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[0],
            json!({ "index": { "_id": "7:2:5", "version": 1, "version_type": "external" } })
        );
        assert_eq!(
            lines[1],
            json!({
                "application_id": 7, "chat_number": 2, "number": 5, "body": "Hello Rustaceans",
                "folded": "hello rustaceans", "version": 0,
                "created_at": "2026-11-28T01:02:03.456789Z", "updated_at": "2026-11-28T04:05:06.000001Z"
            })
        );
        assert_eq!(
            lines[2],
            json!({ "index": { "_id": "7:3:1", "version": 42, "version_type": "external" } })
        );
        assert_eq!(lines[3]["body"], "edited\nbody");
        assert_eq!(lines[3]["version"], 41);
    }

    /// A deleted message's state deletes its document, carrying the tombstone's version, so that an
    /// older state indexed late is refused; deleting a document the index does not hold is done (the
    /// bulk API answers it 404 `not_found`: docs.opensearch.org, api-reference/document-apis/bulk).
    #[tokio::test]
    async fn a_deleted_message_is_deleted_from_the_index_with_its_version() {
        let answer = json!({ "took": 1, "errors": false, "items": [
            { "delete": { "_index": INDEX, "_id": "7:2:5", "status": 200, "result": "deleted" } },
            { "delete": { "_index": INDEX, "_id": "7:2:6", "status": 404, "result": "not_found" } }
        ] });
        let cluster = FakeCluster::with_index(move |_| (200, answer.to_string())).await;
        let search = cluster.connect().await.unwrap();
        let tombstone = |number| Message {
            deleted: true,
            ..message(7, 2, number, "", 9)
        };
        let refused = search.index(&[tombstone(5), tombstone(6)]).await.unwrap();
        assert!(refused.is_empty(), "{refused:?}");
        let lines = cluster.requests_after_connect()[0].ndjson();
        assert_eq!(
            lines,
            [
                json!({ "delete": { "_id": "7:2:5", "version": 10, "version_type": "external" } }),
                json!({ "delete": { "_id": "7:2:6", "version": 10, "version_type": "external" } })
            ]
        );
    }

    /// Deleted chats and applications leave the index in one delete-by-query, which goes on past a
    /// document changed meanwhile (`conflicts=proceed`).
    #[tokio::test]
    async fn forgetting_deleted_chats_and_applications_is_one_delete_by_query() {
        let cluster = FakeCluster::with_index(|_| {
            (
                200,
                json!({ "took": 1, "deleted": 3, "failures": [] }).to_string(),
            )
        })
        .await;
        let search = cluster.connect().await.unwrap();
        search.forget(&[(7, 2)], &[9]).await.unwrap();
        search.forget(&[], &[]).await.unwrap();
        let requests = cluster.requests_after_connect();
        assert_eq!(requests.len(), 1, "{requests:?}");
        assert!(
            requests[0].is(Method::POST, "/test-messages/_delete_by_query"),
            "{requests:?}"
        );
        assert_eq!(requests[0].query.as_deref(), Some("conflicts=proceed"));
        assert_eq!(
            requests[0].json(),
            json!({ "query": { "bool": { "minimum_should_match": 1, "should": [
                { "bool": { "filter": [
                    { "term": { "application_id": 7 } },
                    { "term": { "chat_number": 2 } }
                ] } },
                { "terms": { "application_id": [9] } }
            ] } } })
        );
    }

    #[tokio::test]
    async fn index_of_no_messages_and_search_for_nothing_send_nothing() {
        let cluster = FakeCluster::with_index(|_| (500, String::new())).await;
        let search = cluster.connect().await.unwrap();
        search.index(&[]).await.unwrap();
        assert_eq!(
            search.search(&in_chat("abc", None, 0)).await.unwrap(),
            SearchPage::default()
        );
        assert_eq!(cluster.requests_after_connect().len(), 0);
    }

    #[tokio::test]
    async fn index_treats_a_version_conflict_as_already_indexed() {
        let conflict = json!({ "type": "version_conflict_engine_exception",
            "reason": "[7:2:5]: version conflict, current version [3] is higher or equal to the one provided [1]" });
        let cluster = FakeCluster::with_index(move |_| {
            (
                200,
                bulk_answer(&[("7:2:5", 409, Some(conflict.clone())), ("7:2:6", 201, None)]),
            )
        })
        .await;
        let search = cluster.connect().await.unwrap();
        search
            .index(&[message(7, 2, 5, "older", 0), message(7, 2, 6, "new", 0)])
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn index_is_transient_when_the_cluster_cannot_take_a_document_now() {
        let mapping = json!({ "type": "mapper_parsing_exception", "reason": "failed to parse field [number]" });
        let full = json!({ "type": "rejected_execution_exception", "reason": "rejected execution of coordinating operation" });
        let cluster = FakeCluster::with_index(move |_| {
            let items = [
                ("7:2:5", 201, None),
                ("7:2:6", 400, Some(mapping.clone())),
                ("7:2:7", 429, Some(full.clone())),
            ];
            (200, bulk_answer(&items))
        })
        .await;
        let search = cluster.connect().await.unwrap();
        let messages = [
            message(7, 2, 5, "a", 0),
            message(7, 2, 6, "b", 0),
            message(7, 2, 7, "c", 0),
        ];
        let detail = unavailable_detail(search.index(&messages).await);
        assert!(detail.contains("1 of 3"), "{detail}");
        assert!(
            detail.contains("7:2:7 (429: rejected_execution_exception"),
            "{detail}"
        );
    }

    /// Item-level refusals come back one by one, so the worker can set those commands aside with the
    /// reason instead of acknowledging them as if they were indexed.
    #[tokio::test]
    async fn index_returns_each_document_refused_for_good() {
        let mapping = json!({ "type": "mapper_parsing_exception", "reason": "failed to parse field [number]" });
        let cluster = FakeCluster::with_index(move |_| {
            let items = [
                ("7:2:5", 201, None),
                ("7:2:6", 400, Some(mapping.clone())),
                ("7:2:7", 200, None),
            ];
            (200, bulk_answer(&items))
        })
        .await;
        let search = cluster.connect().await.unwrap();
        let refused = search
            .index(&[
                message(7, 2, 5, "a", 0),
                message(7, 2, 6, "b", 0),
                message(7, 2, 7, "c", 0),
            ])
            .await
            .unwrap();
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].key, (7, 2, 6));
        assert!(
            refused[0]
                .reason
                .contains("400: mapper_parsing_exception: failed to parse field [number]"),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn index_splits_large_batches_into_bulk_requests_of_bounded_size() {
        let cluster = FakeCluster::with_index(|r| {
            let ids: Vec<String> = r
                .ndjson()
                .iter()
                .filter_map(|line| line["index"]["_id"].as_str().map(str::to_string))
                .collect();
            let items: Vec<(&str, u16, Option<Value>)> =
                ids.iter().map(|id| (id.as_str(), 201, None)).collect();
            (200, bulk_answer(&items))
        })
        .await;
        let search = cluster.connect().await.unwrap();
        let body = "b".repeat(64 * 1024);
        let messages: Vec<Message> = (1..=300).map(|n| message(7, 2, n, &body, 0)).collect();
        assert!(search.index(&messages).await.unwrap().is_empty());
        let requests = cluster.requests_after_connect();
        assert_eq!(
            requests.len(),
            5,
            "300 bodies of 64 KiB, each with its folded text, in bulks of 8 MiB"
        );
        let sent: usize = requests.iter().map(|r| r.ndjson().len() / 2).sum();
        assert_eq!(sent, 300);
        for request in &requests {
            assert!(request.body.len() < 9 << 20, "{}", request.body.len());
        }
    }

    #[tokio::test]
    async fn index_rejects_a_bulk_answer_that_does_not_account_for_every_document() {
        let cluster =
            FakeCluster::with_index(|_| (200, bulk_answer(&[("7:2:5", 201, None)]))).await;
        let search = cluster.connect().await.unwrap();
        let detail = unavailable_detail(
            search
                .index(&[message(7, 2, 5, "a", 0), message(7, 2, 6, "b", 0)])
                .await,
        );
        assert!(detail.contains("malformed"), "{detail}");
        assert!(detail.contains("1 items for 2 documents"), "{detail}");

        let cluster =
            FakeCluster::with_index(|_| (200, "<html>proxy error</html>".to_string())).await;
        let search = cluster.connect().await.unwrap();
        let detail = unavailable_detail(search.index(&[message(7, 2, 5, "a", 0)]).await);
        assert!(
            detail.contains("bulk indexing: malformed OpenSearch response"),
            "{detail}"
        );
    }

    #[tokio::test]
    async fn search_of_three_characters_or_more_is_a_trigram_phrase_within_the_chat() {
        let cluster = FakeCluster::with_index(|_| {
            (
                200,
                search_answer(&[(5, "Hello Rustaceans", 2.5), (9, "rustacean", 2.5)]),
            )
        })
        .await;
        let search = cluster.connect().await.unwrap();
        let page = search
            .search(&in_chat("UsTaC  Straße", Some(9), 100))
            .await
            .unwrap();

        let requests = cluster.requests_after_connect();
        assert_eq!(requests.len(), 1, "{requests:?}");
        assert!(
            requests[0].is(Method::POST, "/test-messages/_search"),
            "{requests:?}"
        );
        let body = requests[0].json();
        assert_eq!(
            body["query"]["bool"]["filter"],
            json!([
                { "term": { "application_id": 7 } },
                { "term": { "chat_number": 2 } }
            ])
        );
        assert_eq!(
            body["query"]["bool"]["must"],
            json!([
                { "match_phrase": { "folded": { "query": "ustac" } } },
                { "match_phrase": { "folded": { "query": "strasse" } } }
            ]),
            "every term must match, folded as the body was"
        );
        assert_eq!(body["sort"], json!([{ "number": "desc" }]));
        assert_eq!(body["search_after"], json!([9]));
        assert_eq!(
            body["size"], 101,
            "one more than the page, to know if a next one exists"
        );

        assert_eq!(
            page,
            SearchPage {
                messages: vec![
                    message(7, 2, 5, "Hello Rustaceans", 0),
                    message(7, 2, 9, "rustacean", 0),
                ],
                next: None,
            }
        );
    }

    #[tokio::test]
    async fn search_of_one_or_two_characters_looks_up_the_short_grams() {
        let cluster = FakeCluster::with_index(|_| (200, search_answer(&[(3, "grab", 1.0)]))).await;
        let search = cluster.connect().await.unwrap();
        // Two characters but four bytes: the length that counts is in characters.
        for query in ["Ab", "é", "éé"] {
            let page = search.search(&in_chat(query, None, 20)).await.unwrap();
            assert_eq!(page.messages, vec![message(7, 2, 3, "grab", 0)]);
        }
        let requests = cluster.requests_after_connect();
        assert_eq!(requests.len(), 3);
        for (request, query) in requests.iter().zip(["ab", "é", "éé"]) {
            let body = request.json();
            assert_eq!(
                body["query"]["bool"]["must"],
                json!([{ "match": { "folded.short": { "query": query } } }])
            );
            assert_eq!(
                body["query"]["bool"]["filter"][1],
                json!({ "term": { "chat_number": 2 } })
            );
        }
        search.search(&in_chat("ééé", None, 20)).await.unwrap();
        assert!(
            cluster.requests().last().unwrap().json()["query"]["bool"]["must"][0]
                .get("match_phrase")
                .is_some()
        );
    }

    /// Every match is reachable in newest order, however many there are: a page one hit longer than
    /// asked for has a next page that starts after its last message (`search_after`, no window to run
    /// out of). Across an application the order is creation (in milliseconds), chat, number.
    #[tokio::test]
    async fn search_pages_after_the_cursor_with_no_depth_limit() {
        let cluster = FakeCluster::with_index(|_| {
            (
                200,
                search_answer(&[
                    (20_009, "abc", 1.0),
                    (20_005, "abc", 1.0),
                    (20_001, "abc", 1.0),
                ]),
            )
        })
        .await;
        let search = cluster.connect().await.unwrap();
        let page = search
            .search(&in_chat("abc", Some(20_010), 2))
            .await
            .unwrap();
        assert_eq!(
            page.messages.iter().map(|m| m.number).collect::<Vec<_>>(),
            vec![20_009, 20_005]
        );
        assert_eq!(page.next, Some(SearchCursor::Newest((0, 2, 20_005))));
        let body = cluster.requests_after_connect()[0].json();
        assert_eq!(body["size"], 3);
        assert_eq!(body["search_after"], json!([20_010]));

        let across = SearchRequest {
            scope: SearchScope { app: 7, chat: None },
            ..in_chat("abc", None, 2)
        };
        let after = SearchCursor::Newest((1_764_291_723_456, 4, 8));
        let page = search
            .search(&SearchRequest {
                after: Some(after),
                ..across.clone()
            })
            .await
            .unwrap();
        let body = cluster.requests_after_connect()[1].json();
        assert_eq!(
            body["query"]["bool"]["filter"],
            json!([{ "term": { "application_id": 7 } }])
        );
        assert_eq!(
            body["sort"],
            json!([{ "created_at": "desc" }, { "chat_number": "desc" }, { "number": "desc" }])
        );
        assert_eq!(body["search_after"], json!([1_764_291_723_456_i64, 4, 8]));
        let last = &page.messages[1];
        assert_eq!(
            page.next,
            Some(SearchCursor::Newest((
                last.created_at.timestamp_millis(),
                2,
                20_005
            )))
        );
    }

    /// In relevance order the engine's score decides, pages go by offset, and no page is offered past
    /// the window.
    #[tokio::test]
    async fn relevance_pages_by_offset_within_the_window() {
        let cluster = FakeCluster::with_index(|_| {
            (
                200,
                search_answer(&[(4, "abc abc", 3.0), (1, "abc", 1.0), (2, "abc", 0.5)]),
            )
        })
        .await;
        let search = cluster.connect().await.unwrap();
        let relevance = SearchRequest {
            order: SearchOrder::Relevance,
            ..in_chat("abc", None, 2)
        };
        let page = search.search(&relevance).await.unwrap();
        assert_eq!(page.next, Some(SearchCursor::Skip(2)));
        let body = cluster.requests_after_connect()[0].json();
        assert_eq!(body.get("sort"), None, "by score");
        assert_eq!(body.get("from"), None);
        let near_the_end = SearchRequest {
            after: Some(SearchCursor::Skip(RELEVANCE_WINDOW - 2)),
            ..relevance
        };
        let page = search.search(&near_the_end).await.unwrap();
        assert_eq!(page.next, None);
        let body = cluster.requests_after_connect()[1].json();
        assert_eq!(body["from"], RELEVANCE_WINDOW - 2);
    }

    #[tokio::test]
    async fn search_rejects_a_malformed_answer() {
        for answer in [
            "not json at all".to_string(),
            json!({ "hits": { "hits": [{ "_score": 1.0 }] } }).to_string(),
            json!({ "hits": { "hits": [{ "_score": 1.0, "_source": { "number": 1 } }] } }).to_string(),
            json!({ "hits": { "hits": [{ "_score": 1.0, "_source": source(1, "x", 0).as_object().cloned()
                .map(|mut s| { s.insert("created_at".into(), json!("yesterday")); s }) }] } })
            .to_string(),
        ] {
            let cluster = FakeCluster::with_index(move |_| (200, answer.clone())).await;
            let search = cluster.connect().await.unwrap();
            let detail = unavailable_detail(search.search(&in_chat("abc", None, 10)).await);
            assert!(detail.contains("searching: malformed OpenSearch response"), "{detail}");
        }
    }

    #[tokio::test]
    async fn server_errors_make_search_unavailable() {
        let cluster = FakeCluster::with_index(|r| {
            let reason = json!({ "error": { "type": "search_phase_execution_exception", "reason": "all shards failed" },
                "status": 503 });
            if r.path == "/" { (503, String::new()) } else { (500, reason.to_string()) }
        })
        .await;
        let search = cluster.connect().await.unwrap();
        let detail = unavailable_detail(search.search(&in_chat("abc", None, 10)).await);
        assert!(detail.contains("500"), "{detail}");
        assert!(
            detail.contains("search_phase_execution_exception: all shards failed"),
            "{detail}"
        );
        let detail = unavailable_detail(search.index(&[message(7, 2, 5, "a", 0)]).await);
        assert!(
            detail.contains("bulk indexing: OpenSearch answered 500"),
            "{detail}"
        );
        let detail = unavailable_detail(search.ping().await);
        assert!(detail.contains("503"), "{detail}");

        let cluster = FakeCluster::start(|_| (500, "upstream crashed".to_string())).await;
        let detail = unavailable_detail(cluster.connect().await);
        assert!(
            detail.contains("checking index test-messages: OpenSearch answered 500"),
            "{detail}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_cluster_is_unavailable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);

        let detail = unavailable_detail(OpenSearchIndex::connect(&url, INDEX).await);
        assert!(
            detail.to_lowercase().contains("connection refused"),
            "{detail}"
        );

        let search = OpenSearchIndex::new(&url, INDEX).unwrap();
        unavailable_detail(search.ping().await);
        unavailable_detail(search.search(&in_chat("abc", None, 10)).await);
        unavailable_detail(search.index(&[message(7, 2, 5, "a", 0)]).await);
    }

    #[tokio::test]
    async fn ping_asks_the_cluster() {
        let cluster = FakeCluster::with_index(|r| {
            if r.path == "/" {
                (200, String::new())
            } else {
                (404, String::new())
            }
        })
        .await;
        let search = cluster.connect().await.unwrap();
        search.ping().await.unwrap();
        let requests = cluster.requests_after_connect();
        assert_eq!(requests.len(), 1);
        assert!(requests[0].is(Method::HEAD, "/"), "{requests:?}");
        assert_eq!(requests[0].query, None);
    }

    #[test]
    fn a_version_beyond_what_opensearch_holds_is_rejected() {
        let result = external_version(&message(7, 2, 5, "a", i64::MAX as u64));
        assert!(matches!(result, Err(CoreError::Rejected(_))), "{result:?}");
        assert_eq!(
            external_version(&message(7, 2, 5, "a", i64::MAX as u64 - 1)).unwrap(),
            i64::MAX
        );
    }

    /// Runs against the cluster at `OPENSEARCH_URL` in an index of its own, deleted at the end.
    #[tokio::test]
    #[ignore = "needs OPENSEARCH_URL"]
    async fn real_cluster_finds_case_insensitive_substrings_within_one_chat() {
        use opensearch::indices::{IndicesDeleteParts, IndicesRefreshParts};

        let url = std::env::var("OPENSEARCH_URL")
            .expect("this test needs OPENSEARCH_URL, the address of an OpenSearch cluster, e.g. http://127.0.0.1:9200");
        let index = format!("chatsys-test-{}", rand::random::<u32>());
        let search = OpenSearchIndex::connect(&url, &index).await.unwrap();
        OpenSearchIndex::connect(&url, &index)
            .await
            .expect("connecting to an existing index");
        search.ping().await.unwrap();

        let long_body = format!("{}Zq", "x".repeat(40_000));
        search
            .index(&[
                message(1, 1, 1, "Hello Rustaceans", 0),
                message(1, 1, 2, "rust RUST rust", 0),
                message(1, 1, 3, "nothing here", 0),
                message(1, 1, 4, "xa", 0),
                message(1, 1, 5, &long_body, 0),
                message(1, 2, 1, "Rustaceans in another chat", 0),
                message(2, 1, 1, "Rustaceans in another app", 0),
            ])
            .await
            .unwrap();
        // An edit, then a late copy of the original: the edit stays. Re-indexing the edit is harmless.
        search
            .index(&[message(1, 1, 3, "now with ustac inside", 5)])
            .await
            .unwrap();
        search
            .index(&[message(1, 1, 3, "nothing here", 0)])
            .await
            .unwrap();
        search
            .index(&[message(1, 1, 3, "now with ustac inside", 5)])
            .await
            .unwrap();
        search
            .client
            .indices()
            .refresh(IndicesRefreshParts::Index(&[&index]))
            .send()
            .await
            .unwrap();

        let in_chat_one = |q: &str, after: u64, limit: usize| SearchRequest {
            scope: SearchScope {
                app: 1,
                chat: Some(1),
            },
            after: (after > 0).then_some(SearchCursor::Newest((0, 1, after))),
            ..in_chat(q, None, limit)
        };
        let numbers = |page: SearchPage| {
            page.messages
                .into_iter()
                .map(|m| m.number)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            numbers(search.search(&in_chat_one("USTAC", 0, 100)).await.unwrap()),
            vec![3, 1]
        );
        assert_eq!(
            numbers(search.search(&in_chat_one("rust", 0, 100)).await.unwrap()),
            vec![2, 1]
        );
        let first = search.search(&in_chat_one("rust", 0, 1)).await.unwrap();
        assert_eq!(first.next, Some(SearchCursor::Newest((0, 1, 2))));
        assert_eq!(
            numbers(search.search(&in_chat_one("rust", 2, 1)).await.unwrap()),
            vec![1]
        );
        assert_eq!(
            numbers(search.search(&in_chat_one("A", 0, 100)).await.unwrap()),
            vec![4, 3, 1]
        );
        assert_eq!(
            numbers(search.search(&in_chat_one("X", 0, 100)).await.unwrap()),
            vec![5, 4]
        );
        assert_eq!(
            numbers(search.search(&in_chat_one("xA", 0, 100)).await.unwrap()),
            vec![4]
        );
        assert_eq!(
            numbers(search.search(&in_chat_one("zQ", 0, 100)).await.unwrap()),
            vec![5]
        );
        assert_eq!(
            numbers(
                search
                    .search(&in_chat_one("nothing", 0, 100))
                    .await
                    .unwrap()
            ),
            Vec::<u64>::new()
        );
        assert_eq!(
            numbers(
                search
                    .search(&in_chat_one("\"t r\"", 0, 100))
                    .await
                    .unwrap()
            ),
            vec![2]
        );
        assert_eq!(
            search
                .search(&in_chat_one("Hello", 0, 100))
                .await
                .unwrap()
                .messages[0],
            message(1, 1, 1, "Hello Rustaceans", 0)
        );

        search
            .client
            .indices()
            .delete(IndicesDeleteParts::Index(&[&index]))
            .send()
            .await
            .unwrap();
    }
}
