//! Live chats: the event streams of a chat's changes that the API serves.
//!
//! Each chat streamed in this process has one *feed*: it follows the chat's announcements (Redis pub/sub
//! between processes, a channel in standalone mode), puts them in the chat's order, and passes each
//! change once, rendered once, to every stream of the chat. Announcements arrive at most once and may
//! arrive out of order (several workers); the store's change log is the truth. So a feed that sees a gap
//! waits a moment for it to fill, then reads the missing changes from the store; it also asks the store
//! now and then whether a change stayed unannounced, and reads everything again after the connection to
//! the announcements was lost. A stream starts where its client left off: it reads what the client
//! missed from the store, then takes the feed's changes from where the feed was when it joined.
//!
//! Every part is bounded: a stream reads the store a page at a time, bounded in bytes, and only when its
//! client has taken the previous page; a feed keeps its recent changes for the streams behind, bounded
//! in count and in bytes, and a stream that falls further behind is ended with its last id; the
//! streams of the process, of one application and the chats streamed are counted against limits.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex as SyncMutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::{Mutex, broadcast, mpsc, watch};

use crate::domain::AppId;
use crate::error::CoreError;
use tokio::time::Instant;

use crate::domain::{ChangeKind, ChatEvent};
use crate::error::CoreResult;
use crate::plan::ChatKey;
use crate::ports::{Announcements, Heard, Store};
use crate::render::Render;
use crate::telemetry;

#[derive(Debug, Clone)]
pub struct LiveSettings {
    /// A comment line is sent after this long without an event, so proxies keep an idle stream open.
    pub heartbeat: Duration,
    /// A stream that sent no event for this long ends (its client resumes): heartbeats alone do not
    /// keep a stream, so a client that stopped reading holds no connection on a quiet chat.
    pub max_quiet: Duration,
    /// Changes a stream may be behind its chat before it is ended (and its client resumes).
    pub max_behind: usize,
    /// Bytes of rendered changes a chat keeps for its streams behind: one further behind is ended too.
    pub max_behind_bytes: usize,
    /// A stream ends after this long, and its client resumes: connections spread again over the replicas
    /// after a scale-out.
    pub max_lifetime: Duration,
    /// Streams this process serves at once.
    pub max_streams: usize,
    /// Streams one application may have open on this process at once.
    pub max_streams_per_application: usize,
    /// Distinct chats this process streams at once.
    pub max_chats: usize,
}

impl Default for LiveSettings {
    fn default() -> Self {
        LiveSettings {
            heartbeat: Duration::from_secs(15),
            max_quiet: Duration::from_secs(300),
            max_behind: 1024,
            max_behind_bytes: 4 << 20,
            max_lifetime: Duration::from_secs(3600),
            max_streams: 10_000,
            max_streams_per_application: 100,
            max_chats: 2000,
        }
    }
}

/// How long a feed waits for a missing change to be announced before reading it from the store.
const GAP_WAIT: Duration = Duration::from_millis(250);
/// How often a feed asks the store for the chat's last change, and checks whether it still has streams.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Changes read from the store at a time, and the bytes of their bodies: what a stream catching up holds.
const READ_PAGE: u32 = 500;
const READ_PAGE_BYTES: usize = 256 * 1024;
/// When a client refused for a limit on streams may try again.
const STREAMS_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Announcements waiting for a feed before it is told to read the store instead.
const FEED_INBOX: usize = 1024;

/// One SSE event, rendered once for every stream of its chat.
#[derive(Debug, Clone)]
pub struct Frame {
    pub seq: u64,
    pub bytes: Bytes,
    /// The chat's last change: its streams end with it.
    pub ends: bool,
}

impl Frame {
    fn of(event: &ChatEvent, render: &dyn Render) -> Frame {
        Frame {
            seq: event.seq,
            bytes: render.event(event),
            ends: event.kind == ChangeKind::ChatDeleted,
        }
    }
}

pub struct LiveChats {
    store: Arc<dyn Store>,
    announcements: Arc<dyn Announcements>,
    /// Each change is rendered once, for every stream of its chat.
    render: Arc<dyn Render>,
    settings: LiveSettings,
    feeds: Mutex<HashMap<ChatKey, Arc<Feed>>>,
    dispatching: OnceLock<()>,
    stopped: watch::Receiver<bool>,
    streams: Arc<SyncMutex<StreamCounts>>,
}

/// The streams open in this process, in all and by application.
#[derive(Default)]
struct StreamCounts {
    total: usize,
    by_application: HashMap<AppId, usize>,
}

/// One stream counted in [`StreamCounts`] for as long as it lives.
struct Admitted {
    streams: Arc<SyncMutex<StreamCounts>>,
    app: AppId,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = lock(&self.streams);
        counts.total -= 1;
        if let Some(open) = counts.by_application.get_mut(&self.app) {
            *open -= 1;
            if *open == 0 {
                counts.by_application.remove(&self.app);
            }
        }
    }
}

fn lock<T>(mutex: &SyncMutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

struct Feed {
    inbox: mpsc::Sender<Input>,
    render: Arc<dyn Render>,
    state: SyncMutex<FeedState>,
    max_behind: usize,
    max_behind_bytes: usize,
}

struct FeedState {
    /// The number of the last change passed to the streams.
    last: u64,
    /// The latest changes passed on, for the streams behind (in order; the numbers may skip).
    recent: VecDeque<Frame>,
    recent_bytes: usize,
    /// The highest change dropped from `recent`: a stream that has not sent it missed it.
    dropped: u64,
    /// Tells the streams `last` moved; its receivers are the feed's streams.
    moved: watch::Sender<u64>,
}

/// What a stream takes next from its feed.
enum Taken {
    Frame(Frame),
    /// Changes after the stream's cursor were dropped before it took them.
    Missed,
    Nothing,
}

enum Input {
    Changes(Arc<[ChatEvent]>),
    /// Announcements may have been missed: read the store.
    Repair,
}

impl LiveChats {
    /// Streams end when `stopped` turns true (the process is shutting down; clients resume elsewhere).
    pub fn new(
        store: Arc<dyn Store>,
        announcements: Arc<dyn Announcements>,
        render: Arc<dyn Render>,
        settings: LiveSettings,
        stopped: watch::Receiver<bool>,
    ) -> Arc<Self> {
        Arc::new(LiveChats {
            store,
            announcements,
            render,
            settings,
            feeds: Mutex::new(HashMap::new()),
            dispatching: OnceLock::new(),
            stopped,
            streams: Arc::default(),
        })
    }

    /// Counts a stream of `app`, unless a limit on streams is reached.
    fn admit(&self, app: AppId) -> CoreResult<Admitted> {
        let mut counts = lock(&self.streams);
        let of_app = counts.by_application.get(&app).copied().unwrap_or(0);
        let refused = if counts.total >= self.settings.max_streams {
            Some("event streams on this server")
        } else if of_app >= self.settings.max_streams_per_application {
            Some("event streams of this application on this server")
        } else {
            None
        };
        if let Some(what) = refused {
            return Err(CoreError::TooMany {
                what,
                retry_after: STREAMS_RETRY_AFTER,
            });
        }
        counts.total += 1;
        *counts.by_application.entry(app).or_default() += 1;
        Ok(Admitted {
            streams: self.streams.clone(),
            app,
        })
    }

    /// A stream of the chat's changes after `after` (or, without it, from now on): first those read from
    /// the store, then the live ones. An `after` beyond the chat's last change (a cursor of a chat whose
    /// store was restored from a backup, say) starts from now, so that no new change is skipped.
    pub async fn open(
        self: &Arc<Self>,
        chat: ChatKey,
        after: Option<u64>,
    ) -> CoreResult<impl Stream<Item = Bytes> + Send + use<>> {
        if self.dispatching.set(()).is_ok() {
            tokio::spawn(dispatch(Arc::downgrade(self), self.announcements.listen()));
        }
        let admitted = self.admit(chat.0)?;
        let (feed, moved, start) = self.join(chat).await?;
        let after = match after {
            Some(after) if after > start => {
                Some(after.min(self.store.last_chat_event(chat.0, chat.1).await?))
            }
            other => other,
        };
        metrics::counter!(telemetry::LIVE_STREAMS.name).increment(1);
        let stream = Reader {
            store: self.store.clone(),
            chat,
            feed,
            moved,
            _admitted: admitted,
            start,
            from: after.unwrap_or(start),
            cursor: after.unwrap_or(start),
            queued: std::collections::VecDeque::from([self.render.stream_opened()]),
            ended: false,
            heartbeat: self.settings.heartbeat,
            max_quiet: self.settings.max_quiet,
            last_event: Instant::now(),
            ends_at: Instant::now() + self.settings.max_lifetime,
            stopped: self.stopped.clone(),
        };
        Ok(futures::stream::unfold(stream, |mut reader| async move {
            let bytes = reader.next().await?;
            Some((bytes, reader))
        }))
    }

    /// Joins the chat's feed (starting it when this process has none, within the limit on chats): the
    /// feed, the stream's signal that it moved, and the number of the last change it passed on.
    async fn join(
        self: &Arc<Self>,
        chat: ChatKey,
    ) -> CoreResult<(Arc<Feed>, watch::Receiver<u64>, u64)> {
        let mut feeds = self.feeds.lock().await;
        let feed = match feeds.get(&chat) {
            Some(feed) => feed.clone(),
            None if feeds.len() >= self.settings.max_chats => {
                return Err(CoreError::TooMany {
                    what: "chats streamed on this server",
                    retry_after: STREAMS_RETRY_AFTER,
                });
            }
            None => {
                // Following first, then reading the last change: whatever is announced after that read
                // is heard, and whatever was before it is in the store.
                if let Err(e) = self.announcements.follow(chat).await {
                    tracing::warn!(error = %e, "following a chat's announcements failed; its feed reads the store");
                }
                let last = self.store.last_chat_event(chat.0, chat.1).await?;
                let (inbox, input) = mpsc::channel(FEED_INBOX);
                let feed = Arc::new(Feed {
                    inbox,
                    render: self.render.clone(),
                    state: SyncMutex::new(FeedState {
                        last,
                        recent: VecDeque::new(),
                        recent_bytes: 0,
                        dropped: last,
                        moved: watch::channel(last).0,
                    }),
                    max_behind: self.settings.max_behind.max(1),
                    max_behind_bytes: self.settings.max_behind_bytes,
                });
                feeds.insert(chat, feed.clone());
                tokio::spawn(run_feed(self.clone(), chat, feed.clone(), input));
                feed
            }
        };
        let state = feed.lock();
        let (moved, last) = (state.moved.subscribe(), state.last);
        drop(state);
        Ok((feed, moved, last))
    }
}

impl Feed {
    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        lock(&self.state)
    }

    /// Passes a change on: kept for the streams behind, within the feed's bounds (the newest always).
    fn pass(&self, state: &mut FeedState, frame: Frame) {
        state.last = frame.seq;
        state.recent_bytes += frame.bytes.len();
        state.recent.push_back(frame);
        while state.recent.len() > 1
            && (state.recent.len() > self.max_behind || state.recent_bytes > self.max_behind_bytes)
        {
            let dropped = state.recent.pop_front().expect("more than one");
            state.recent_bytes -= dropped.bytes.len();
            state.dropped = dropped.seq;
        }
        state.moved.send_replace(state.last);
    }

    /// The first change after `cursor`.
    fn after(&self, cursor: u64) -> Taken {
        let state = self.lock();
        if cursor < state.dropped {
            return Taken::Missed;
        }
        let next = state.recent.partition_point(|frame| frame.seq <= cursor);
        match state.recent.get(next) {
            Some(frame) => Taken::Frame(frame.clone()),
            None => Taken::Nothing,
        }
    }
}

/// Hands each announcement to its chat's feed.
async fn dispatch(live: std::sync::Weak<LiveChats>, mut heard: broadcast::Receiver<Heard>) {
    loop {
        let input = match heard.recv().await {
            Ok(Heard::Changes(events)) => Some(events),
            Ok(Heard::Interrupted) | Err(broadcast::error::RecvError::Lagged(_)) => None,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(live) = live.upgrade() else { return };
        let feeds = live.feeds.lock().await;
        match input {
            Some(events) => {
                let Some(first) = events.first() else {
                    continue;
                };
                let chat = (first.message.application_id, first.message.chat_number);
                if let Some(feed) = feeds.get(&chat) {
                    // A full inbox drops the announcement: the gap it leaves makes the feed read the store.
                    let _ = feed.inbox.try_send(Input::Changes(events));
                }
            }
            None => {
                for feed in feeds.values() {
                    let _ = feed.inbox.try_send(Input::Repair);
                }
            }
        }
    }
}

/// A chat's feed: puts announced changes in order, reads missing ones from the store, and retires when
/// its last stream has gone.
async fn run_feed(
    live: Arc<LiveChats>,
    chat: ChatKey,
    feed: Arc<Feed>,
    mut input: mpsc::Receiver<Input>,
) {
    // Announced changes beyond a gap, waiting for it to fill.
    let mut held: BTreeMap<u64, ChatEvent> = BTreeMap::new();
    let mut gap_since: Option<Instant> = None;
    // The store's last change seen at the previous check, when the feed was behind it.
    let mut store_ahead: Option<u64> = None;
    let mut checks = tokio::time::interval_at(Instant::now() + CHECK_EVERY, CHECK_EVERY);
    loop {
        let repair = tokio::select! {
            received = input.recv() => match received {
                Some(Input::Changes(events)) => {
                    held.extend(events.iter().map(|e| (e.seq, e.clone())));
                    false
                }
                Some(Input::Repair) => true,
                None => return,
            },
            () = sleep_until(gap_since.map(|since| since + GAP_WAIT)) => true,
            _ = checks.tick() => {
                if retire(&live, chat, &feed).await {
                    return;
                }
                match live.store.last_chat_event(chat.0, chat.1).await {
                    Ok(stored) => {
                        let last = feed.lock().last;
                        // Behind at two checks in a row: what the earlier one saw was never announced.
                        let missed = store_ahead.is_some_and(|seen| last < seen);
                        store_ahead = (stored > last).then_some(stored);
                        missed
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "checking a chat's last change failed");
                        false
                    }
                }
            }
        };
        if repair {
            metrics::counter!(telemetry::LIVE_REPAIRS.name).increment(1);
            if let Err(e) = read_store(live.store.as_ref(), chat, &feed).await {
                tracing::warn!(error = %e, "reading a chat's changes from the store failed; retrying");
            }
        }
        pass_on(&feed, &mut held);
        gap_since = match (held.is_empty(), gap_since) {
            (true, _) => None,
            (false, Some(since)) if !repair => Some(since),
            (false, _) => Some(Instant::now()),
        };
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Passes on the held changes that follow the last one passed, in order, and drops those already passed.
fn pass_on(feed: &Feed, held: &mut BTreeMap<u64, ChatEvent>) {
    let mut state = feed.lock();
    while let Some(entry) = held.first_entry() {
        let seq = *entry.key();
        if seq <= state.last {
            entry.remove();
        } else if seq == state.last + 1 {
            let event = entry.remove();
            feed.pass(&mut state, Frame::of(&event, feed.render.as_ref()));
        } else {
            break;
        }
    }
}

/// Passes on every change the store has after the feed's last one.
async fn read_store(store: &dyn Store, chat: ChatKey, feed: &Feed) -> CoreResult<()> {
    let from = feed.lock().last;
    loop {
        let after = feed.lock().last;
        let events = store
            .chat_events(chat.0, chat.1, from, after, READ_PAGE, READ_PAGE_BYTES)
            .await?;
        if events.is_empty() {
            return Ok(());
        }
        let mut state = feed.lock();
        for event in &events {
            if event.seq > state.last {
                feed.pass(&mut state, Frame::of(event, feed.render.as_ref()));
            }
        }
    }
}

/// Removes the feed when no stream reads it any more (a stream joining holds the feeds' lock).
async fn retire(live: &LiveChats, chat: ChatKey, feed: &Arc<Feed>) -> bool {
    let mut feeds = live.feeds.lock().await;
    if feed.lock().moved.receiver_count() > 0 {
        return false;
    }
    feeds.remove(&chat);
    drop(feeds);
    if let Err(e) = live.announcements.unfollow(chat).await {
        tracing::debug!(error = %e, "unfollowing a chat failed");
    }
    true
}

/// One client's stream.
struct Reader {
    store: Arc<dyn Store>,
    chat: ChatKey,
    feed: Arc<Feed>,
    moved: watch::Receiver<u64>,
    _admitted: Admitted,
    /// Where the feed was when this stream joined it: the receiver has every change after it.
    start: u64,
    /// Where the client's catch-up began.
    from: u64,
    /// The last change sent.
    cursor: u64,
    queued: std::collections::VecDeque<Bytes>,
    ended: bool,
    heartbeat: Duration,
    max_quiet: Duration,
    /// When the stream last sent an event (or opened).
    last_event: Instant,
    ends_at: Instant,
    stopped: watch::Receiver<bool>,
}

impl Reader {
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(bytes) = self.queued.pop_front() {
                return Some(bytes);
            }
            if self.ended || *self.stopped.borrow() {
                return None;
            }
            if self.cursor < self.start {
                // What the client missed before this stream joined the feed, from the store.
                match self
                    .store
                    .chat_events(
                        self.chat.0,
                        self.chat.1,
                        self.from,
                        self.cursor,
                        READ_PAGE,
                        READ_PAGE_BYTES,
                    )
                    .await
                {
                    Ok(events) if events.is_empty() => self.cursor = self.start,
                    Ok(events) => {
                        for event in &events {
                            let frame = Frame::of(event, self.feed.render.as_ref());
                            self.ended |= frame.ends;
                            self.queued.push_back(frame.bytes);
                        }
                        self.cursor = events.last().map_or(self.cursor, |e| e.seq);
                        self.last_event = Instant::now();
                    }
                    Err(e) => {
                        // The client resumes from its last id once the store answers again.
                        tracing::warn!(error = %e, "reading missed changes failed; ending the stream");
                        self.ended = true;
                    }
                }
                continue;
            }
            match self.feed.after(self.cursor) {
                Taken::Frame(frame) => {
                    self.cursor = frame.seq;
                    self.last_event = Instant::now();
                    self.ended |= frame.ends;
                    return Some(frame.bytes);
                }
                Taken::Missed => {
                    self.ended = true;
                    return Some(self.feed.render.overflow(self.cursor));
                }
                Taken::Nothing => {}
            }
            tokio::select! {
                moved = self.moved.changed() => if moved.is_err() {
                    return None;
                },
                () = tokio::time::sleep(self.heartbeat) => return Some(self.feed.render.heartbeat()),
                () = tokio::time::sleep_until(self.ends_at) => return None,
                () = tokio::time::sleep_until(self.last_event + self.max_quiet) => return None,
                _ = self.stopped.wait_for(|stop| *stop) => return None,
            }
        }
    }
}
