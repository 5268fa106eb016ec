//! The hot-page layer in front of the store's lists: a page is cached rendered, keyed by its list's
//! generation, which every commit to the list moves; so a cached page is as fresh as the generation it
//! was read at. Pages live in the shared cache, and the pages read twice also in process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quick_cache::Weighter;
use quick_cache::sync::Cache as LocalCache;
use serde::{Deserialize, Serialize};

use crate::domain::{self, Order, Page};
use crate::error::CoreResult;
use crate::pages::{ListPage, PageLink};
use crate::ports::{Cache, ListScope};
use crate::reads::{counted, soft};

/// A page of a list as rendered at one generation of the list.
type HotPageKey = (ListScope, u64, Page);

/// How long a list's generation is trusted in process before Redis is asked again.
const LIST_GENERATION_TTL: Duration = Duration::from_millis(250);

/// The size the hot-page cache expects of a page (100 messages of 200 bytes), to size its table.
const HOT_PAGE_TYPICAL_BYTES: u64 = 32 * 1024;

/// What a held page costs: its bytes and a little for its cursors, key and bookkeeping.
#[derive(Debug, Clone)]
struct PageWeight;

impl Weighter<HotPageKey, ListPage> for PageWeight {
    fn weight(&self, _key: &HotPageKey, page: &ListPage) -> u64 {
        (page.json.len() + 256) as u64
    }
}

pub struct ListCache {
    cache: Arc<dyn Cache>,
    /// Each list's generation and when the shared cache said so: fresh for [`LIST_GENERATION_TTL`].
    list_generations: LocalCache<ListScope, (u64, Instant)>,
    /// Rendered pages held in process, so that a hot page is served without the network; keyed by the
    /// list's generation, they are exactly as fresh as `list_generations`. Bounded in bytes.
    hot_pages: Option<LocalCache<HotPageKey, ListPage, PageWeight>>,
}

impl ListCache {
    pub fn new(cache: Arc<dyn Cache>) -> Self {
        ListCache {
            cache,
            list_generations: LocalCache::new(100_000),
            hot_pages: None,
        }
    }

    /// Keeps up to `max_bytes` of rendered list pages in process (0: none), in front of the shared
    /// cache. Worth it where that cache is across the network; standalone's is in process already.
    pub fn with_hot_pages(mut self, max_bytes: u64) -> Self {
        self.hot_pages = (max_bytes > 0).then(|| {
            let pages = (max_bytes / HOT_PAGE_TYPICAL_BYTES).max(1) as usize;
            LocalCache::with_weighter(pages, max_bytes, PageWeight)
        });
        self
    }

    /// The list's current generation, held in process for a moment: a commit shows in lists at most
    /// `LIST_GENERATION_TTL` later, well within the second the contract allows.
    async fn list_generation(&self, scope: &ListScope) -> Option<u64> {
        if let Some((generation, asked)) = self.list_generations.get(scope)
            && asked.elapsed() < LIST_GENERATION_TTL
        {
            return Some(generation);
        }
        let asked = Instant::now();
        let generation = soft(self.cache.list_generation(scope).await.map(Some))?;
        self.list_generations
            .insert(scope.clone(), (generation, asked));
        Some(generation)
    }

    pub async fn list<F, Fut>(&self, scope: ListScope, page: Page, load: F) -> CoreResult<ListPage>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = CoreResult<ListPage>>,
    {
        let Some(generation) = self.list_generation(&scope).await else {
            return load().await;
        };
        let hot_key = (scope, generation, page);
        if let Some(hot_pages) = &self.hot_pages {
            let held = hot_pages.get(&hot_key);
            if let Some(held) = counted("list_in_process", held) {
                return Ok(held);
            }
        }
        let scope = &hot_key.0;
        let page_key = cached_page_name(&page);
        let cached = soft(self.cache.list_page(scope, generation, &page_key).await)
            .and_then(|bytes| decode_cached_page(&bytes));
        if let Some(cached) = counted("list", cached) {
            // Found in the shared cache, the page has been read before: only pages read twice take
            // this process's memory, so a crawl through a long history does not evict the hot ones.
            if let Some(hot_pages) = &self.hot_pages {
                hot_pages.insert(hot_key.clone(), cached.clone());
            }
            return Ok(cached);
        }
        let fresh = load().await?;
        let encoded = encode_cached_page(&fresh);
        soft(
            self.cache
                .put_list(scope, generation, &page_key, &encoded)
                .await,
        );
        Ok(fresh)
    }
}

/// A page's name within its list in the shared cache.
fn cached_page_name(page: &Page) -> String {
    let order = match page.order {
        Order::Asc => "asc",
        Order::Desc => "desc",
    };
    let cursor = match page.cursor {
        domain::Cursor::Start => String::new(),
        domain::Cursor::After(n) => format!(">{n}"),
        domain::Cursor::Before(n) => format!("<{n}"),
        domain::Cursor::Between(after, before) => format!(">{after}<{before}"),
    };
    format!("{order}{cursor}:{}", page.limit)
}

/// What a cached page holds besides its JSON, on the line before it.
#[derive(Serialize, Deserialize)]
struct CachedPageHead {
    next: Option<PageLink>,
    prev: Option<PageLink>,
    last_event: Option<u64>,
}

fn encode_cached_page(page: &ListPage) -> Vec<u8> {
    let head = CachedPageHead {
        next: page.next.clone(),
        prev: page.prev.clone(),
        last_event: page.last_event,
    };
    let mut out = serde_json::to_vec(&head).expect("a page head serialises");
    out.push(b'\n');
    out.extend_from_slice(&page.json);
    out
}

/// A page cached by an older release (or otherwise unreadable) is a miss.
fn decode_cached_page(bytes: &[u8]) -> Option<ListPage> {
    let split = bytes.iter().position(|b| *b == b'\n')?;
    let head: CachedPageHead = serde_json::from_slice(&bytes[..split]).ok()?;
    Some(ListPage {
        json: Bytes::copy_from_slice(&bytes[split + 1..]),
        next: head.next,
        prev: head.prev,
        last_event: head.last_event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pages::PageLink;

    #[test]
    fn cached_pages_round_trip() {
        for (next, last_event) in [(None, None), (Some(PageLink::after("42".into())), Some(7))] {
            let page = ListPage {
                json: bytes::Bytes::from_static(b"[{\"a\":\"x\\ny\"}]"),
                next,
                prev: Some(PageLink::before("3".into())),
                last_event,
            };
            assert_eq!(decode_cached_page(&encode_cached_page(&page)), Some(page));
        }
    }
}
