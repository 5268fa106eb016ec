//! A page of a list as clients read it: its rows rendered as a JSON array, and where its neighbours are.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::domain::{Order, Page, Scan};

/// A rendered page of a list: the JSON array, the cursors of its neighbours, and for a chat's messages
/// the chat's latest change as of the page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListPage {
    pub json: Bytes,
    pub next: Option<PageLink>,
    pub prev: Option<PageLink>,
    pub last_event: Option<u64>,
}

/// Where a neighbouring page is: the `after` and `before` it is asked with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageLink {
    pub after: Option<String>,
    pub before: Option<String>,
}

impl PageLink {
    pub fn after(cursor: String) -> Self {
        PageLink {
            after: Some(cursor),
            before: None,
        }
    }

    pub fn before(cursor: String) -> Self {
        PageLink {
            after: None,
            before: Some(cursor),
        }
    }

    /// The query parameters naming the page.
    pub fn params(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [("after", &self.after), ("before", &self.before)]
            .into_iter()
            .filter_map(|(name, value)| Some((name, value.as_deref()?)))
    }
}

/// Renders the rows of one page, read in the order its scan walked with one row more than the page
/// holds: that row says whether the list goes on the way the scan walked; the other way, it goes on
/// when the page was asked for next to a cursor. The rows are shown in the page's order, rendered by
/// `render`.
pub fn render_page<T>(
    mut rows: Vec<T>,
    page: Page,
    cursor: impl Fn(&T) -> String,
    render: impl FnOnce(&[T]) -> Bytes,
) -> ListPage {
    let walked_on = rows.len() > page.limit as usize;
    rows.truncate(page.limit as usize);
    // The page the walk would read next keeps its far bound; the one the other way starts afresh.
    let (above, below) = match page.scan() {
        Scan::Up { below: far, .. } => (
            rows.last().filter(|_| walked_on).map(|row| PageLink {
                after: Some(cursor(row)),
                before: far.map(|n| n.to_string()),
            }),
            rows.first()
                .filter(|_| page.has_cursor())
                .map(|row| PageLink::before(cursor(row))),
        ),
        Scan::Down { above: far, .. } => (
            rows.first()
                .filter(|_| page.has_cursor())
                .map(|row| PageLink::after(cursor(row))),
            rows.last().filter(|_| walked_on).map(|row| PageLink {
                after: (far > 0).then(|| far.to_string()),
                before: Some(cursor(row)),
            }),
        ),
    };
    if page.scans_backwards() {
        rows.reverse();
    }
    let (next, prev) = match page.order {
        Order::Asc => (above, below),
        Order::Desc => (below, above),
    };
    ListPage {
        json: render(&rows),
        next,
        prev,
        last_event: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain;

    fn numbers_page(rows: Vec<u64>, page: Page) -> ListPage {
        render_page(
            rows,
            page,
            |n| n.to_string(),
            |rows| serde_json::to_vec(rows).unwrap().into(),
        )
    }

    fn after(n: &str) -> Option<PageLink> {
        Some(PageLink::after(n.to_string()))
    }

    fn before(n: &str) -> Option<PageLink> {
        Some(PageLink::before(n.to_string()))
    }

    #[test]
    fn a_page_with_one_extra_row_points_at_the_next_page() {
        let page = numbers_page(vec![1, 2, 3], Page::first(2));
        assert_eq!(page.json, &b"[1,2]"[..]);
        assert_eq!((page.next, page.prev), (after("2"), None));
        let last = numbers_page(vec![1, 2], Page::first(2));
        assert_eq!(last.next, None);
        let empty = numbers_page(Vec::new(), Page::first(2));
        assert_eq!(empty.json, &b"[]"[..]);
    }

    #[test]
    fn newest_first_pages_point_at_older_ones_next() {
        let newest = Page {
            order: Order::Desc,
            ..Page::first(2)
        };
        let page = numbers_page(vec![9, 8, 7], newest);
        assert_eq!(page.json, &b"[9,8]"[..]);
        assert_eq!((page.next, page.prev), (before("8"), None));
        let older = Page {
            cursor: domain::Cursor::Before(8),
            ..newest
        };
        let page = numbers_page(vec![7, 6], older);
        assert_eq!(page.json, &b"[7,6]"[..]);
        assert_eq!((page.next, page.prev), (None, after("7")));
    }

    #[test]
    fn a_page_read_against_its_order_is_shown_in_it() {
        // `order=desc&after=5`: the two messages right above 5, read upwards, shown newest first.
        let newer = Page {
            order: Order::Desc,
            cursor: domain::Cursor::After(5),
            ..Page::first(2)
        };
        let page = numbers_page(vec![6, 7, 8], newer);
        assert_eq!(page.json, &b"[7,6]"[..]);
        assert_eq!((page.next, page.prev), (before("6"), after("7")));
        // `before=5` in ascending order: the two right below 5, read downwards, shown oldest first.
        let earlier = Page {
            cursor: domain::Cursor::Before(5),
            ..Page::first(2)
        };
        let page = numbers_page(vec![4, 3], earlier);
        assert_eq!(page.json, &b"[3,4]"[..]);
        assert_eq!((page.next, page.prev), (after("4"), None));
    }

    #[test]
    fn a_page_between_two_numbers_keeps_its_far_bound_in_the_next_link() {
        // `after=2&before=9&limit=2`: 3 and 4, then the page after 4 still stops before 9.
        let range = Page {
            cursor: domain::Cursor::Between(2, 9),
            ..Page::first(2)
        };
        let page = numbers_page(vec![3, 4, 5], range);
        assert_eq!(page.json, &b"[3,4]"[..]);
        let next = PageLink {
            after: Some("4".into()),
            before: Some("9".into()),
        };
        assert_eq!((page.next, page.prev), (Some(next), before("3")));
    }
}
