//! Group commit: requests that wait at the same time for the same round trip (a confirmed publish to
//! one queue, a Redis script) share one. A fixed number of lanes each carry one round trip at a time;
//! a lane that is free takes everything waiting (within the limits) at once, so an idle system sends a
//! lone request immediately, and under load the next group fills while the lanes are busy. Nothing
//! waits on a timer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::{Notify, oneshot};

/// One round trip for a group of requests.
#[async_trait]
pub trait Flush: Send + Sync + 'static {
    type Item: Send + 'static;
    type Output: Send + 'static;
    /// Carries `items` on `lane`; answers one output per item, in their order.
    async fn flush(&self, lane: usize, items: Vec<Self::Item>) -> Vec<Self::Output>;
}

/// How large a group may grow, and how many round trips run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimits {
    pub count: usize,
    /// Of the sizes the requests are given with; a group holds more only when its one item is larger.
    pub bytes: usize,
    pub lanes: usize,
}

struct Entry<T, R> {
    item: T,
    size: usize,
    reply: oneshot::Sender<R>,
}

struct Waiting<T, R> {
    entries: VecDeque<Entry<T, R>>,
    closed: bool,
}

impl<T, R> Waiting<T, R> {
    /// The next round trip's requests: as many as the limits allow, the first whatever its size.
    fn take(&mut self, limits: &GroupLimits) -> Option<Vec<Entry<T, R>>> {
        let mut taken = Vec::new();
        let mut bytes = 0;
        while let Some(entry) = self.entries.front() {
            if !taken.is_empty()
                && (taken.len() == limits.count || bytes + entry.size > limits.bytes)
            {
                break;
            }
            bytes += entry.size;
            taken.push(self.entries.pop_front().expect("a front entry"));
        }
        (!taken.is_empty()).then_some(taken)
    }
}

struct Shared<T, R> {
    waiting: Mutex<Waiting<T, R>>,
    arrived: Notify,
}

/// Requests carried in groups by `lanes` round trips at once. Dropping it stops the lanes once their
/// round trips end.
pub struct GroupCommit<F: Flush> {
    shared: Arc<Shared<F::Item, F::Output>>,
}

impl<F: Flush> GroupCommit<F> {
    /// Starts the lanes: must be called within a Tokio runtime.
    pub fn start(flush: F, limits: GroupLimits) -> Self {
        let shared = Arc::new(Shared {
            waiting: Mutex::new(Waiting {
                entries: VecDeque::new(),
                closed: false,
            }),
            arrived: Notify::new(),
        });
        let flush = Arc::new(flush);
        let limits = GroupLimits {
            count: limits.count.max(1),
            lanes: limits.lanes.max(1),
            ..limits
        };
        for lane in 0..limits.lanes {
            tokio::spawn(run_lane(lane, shared.clone(), flush.clone(), limits));
        }
        GroupCommit { shared }
    }

    /// Waits for the round trip that carries `item` and answers its output; `None` when the lanes
    /// stopped first.
    pub async fn submit(&self, size: usize, item: F::Item) -> Option<F::Output> {
        let (reply, answer) = oneshot::channel();
        self.shared
            .waiting
            .lock()
            .expect("group commit lock")
            .entries
            .push_back(Entry { item, size, reply });
        self.shared.arrived.notify_one();
        answer.await.ok()
    }
}

impl<F: Flush> Drop for GroupCommit<F> {
    fn drop(&mut self) {
        self.shared
            .waiting
            .lock()
            .expect("group commit lock")
            .closed = true;
        self.shared.arrived.notify_waiters();
    }
}

async fn run_lane<F: Flush>(
    lane: usize,
    shared: Arc<Shared<F::Item, F::Output>>,
    flush: Arc<F>,
    limits: GroupLimits,
) {
    loop {
        let entries = loop {
            // Registered before looking, so that neither a request nor the drop in between is missed.
            let arrived = shared.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            {
                let mut waiting = shared.waiting.lock().expect("group commit lock");
                if waiting.closed {
                    return;
                }
                if let Some(taken) = waiting.take(&limits) {
                    if !waiting.entries.is_empty() {
                        // More than one round trip holds: another free lane takes the rest.
                        shared.arrived.notify_one();
                    }
                    break taken;
                }
            }
            arrived.await;
        };
        let (items, replies): (Vec<_>, Vec<_>) =
            entries.into_iter().map(|e| (e.item, e.reply)).unzip();
        let outputs = flush.flush(lane, items).await;
        debug_assert_eq!(outputs.len(), replies.len(), "one output per item");
        for (reply, output) in replies.into_iter().zip(outputs) {
            let _ = reply.send(output);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::Semaphore;

    /// Records each round trip's group and items; each waits for a permit, so a test decides when
    /// round trips end.
    struct Recorded {
        trips: Mutex<Vec<Vec<u32>>>,
        gate: Semaphore,
    }

    #[async_trait]
    impl Flush for Arc<Recorded> {
        type Item = u32;
        type Output = u32;
        async fn flush(&self, _: usize, items: Vec<u32>) -> Vec<u32> {
            self.trips.lock().unwrap().push(items.clone());
            self.gate.acquire().await.unwrap().forget();
            items.into_iter().map(|i| i * 10).collect()
        }
    }

    fn recorded(permits: usize) -> Arc<Recorded> {
        Arc::new(Recorded {
            trips: Mutex::default(),
            gate: Semaphore::new(permits),
        })
    }

    const LIMITS: GroupLimits = GroupLimits {
        count: 3,
        bytes: 100,
        lanes: 1,
    };

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_request_goes_at_once_without_waiting_for_company() {
        let flush = recorded(1);
        let commit = GroupCommit::start(flush.clone(), LIMITS);
        let started = tokio::time::Instant::now();
        assert_eq!(commit.submit(1, 4).await, Some(40));
        // With the clock paused, any timer would have shown as time passed.
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(*flush.trips.lock().unwrap(), [vec![4]]);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_arriving_while_the_lane_is_busy_share_the_next_round_trip() {
        let flush = recorded(0);
        let commit = Arc::new(GroupCommit::start(flush.clone(), LIMITS));
        let submit = |size, item| {
            let commit = commit.clone();
            tokio::spawn(async move { commit.submit(size, item).await })
        };
        let first = submit(10, 1);
        settle().await;
        let sizes = [10, 10, 10, 10, 10, 60, 60, 200];
        let waiting: Vec<_> = (2..)
            .zip(sizes)
            .map(|(item, size)| submit(size, item))
            .collect();
        settle().await;
        assert_eq!(flush.trips.lock().unwrap().len(), 1, "the lane is busy");
        flush.gate.add_permits(10);
        assert_eq!(first.await.unwrap(), Some(10));
        for (item, answer) in (2..).zip(waiting) {
            assert_eq!(answer.await.unwrap(), Some(item * 10));
        }
        // In arrival order: three at most (the count), within 100 bytes unless one alone is larger.
        assert_eq!(
            *flush.trips.lock().unwrap(),
            [vec![1], vec![2, 3, 4], vec![5, 6, 7], vec![8], vec![9]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_goes_at_once_on_a_free_lane_while_another_is_busy() {
        let flush = recorded(0);
        let limits = GroupLimits { lanes: 2, ..LIMITS };
        let commit = Arc::new(GroupCommit::start(flush.clone(), limits));
        let submit = |item| {
            let commit = commit.clone();
            tokio::spawn(async move { commit.submit(1, item).await })
        };
        let first = submit(1);
        settle().await;
        let second = submit(2);
        settle().await;
        assert_eq!(
            *flush.trips.lock().unwrap(),
            [vec![1], vec![2]],
            "the second lane took the second request while the first was busy"
        );
        flush.gate.add_permits(2);
        assert_eq!(first.await.unwrap(), Some(10));
        assert_eq!(second.await.unwrap(), Some(20));
    }

    #[tokio::test(start_paused = true)]
    async fn its_lanes_stop_once_it_is_dropped() {
        let flush = recorded(1);
        let commit = GroupCommit::start(flush.clone(), GroupLimits { lanes: 3, ..LIMITS });
        assert_eq!(commit.submit(1, 1).await, Some(10));
        assert_eq!(Arc::strong_count(&flush), 2, "the lanes share one flush");
        drop(commit);
        settle().await;
        assert_eq!(Arc::strong_count(&flush), 1, "every lane ended");
    }
}
