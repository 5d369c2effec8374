//! Streams that arrived and wait for [`Host::accept`](super::Host::accept):
//! a bounded queue that any number of tasks may take from, with no lock
//! held across an await.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

/// A bounded queue with a close.
#[derive(Debug)]
pub(super) struct Inbox<T> {
    state: Mutex<State<T>>,
    /// Woken on each push and on close.
    notify: Notify,
    /// Most items held.
    capacity: usize,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

/// What [`Inbox::take`] found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Taken<T> {
    /// The oldest item.
    Item(T),
    /// Closed, and nothing left.
    Closed,
    /// Nothing yet.
    Empty,
}

impl<T> Inbox<T> {
    pub(super) fn new(capacity: usize) -> Inbox<T> {
        Inbox {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
            }),
            notify: Notify::new(),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `item`, or hands it back when the queue is full or closed.
    pub(super) fn push(&self, item: T) -> Result<(), T> {
        {
            let mut s = self.lock();
            if s.closed || s.items.len() >= self.capacity {
                return Err(item);
            }
            s.items.push_back(item);
        }
        self.notify.notify_one();
        Ok(())
    }

    /// The oldest item, without waiting.
    pub(super) fn take(&self) -> Taken<T> {
        let mut s = self.lock();
        match s.items.pop_front() {
            Some(i) => Taken::Item(i),
            None if s.closed => Taken::Closed,
            None => Taken::Empty,
        }
    }

    /// The oldest item, waiting for one; `None` once closed and empty.
    pub(super) async fn next(&self) -> Option<T> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before looking, so a push in between is not missed.
            notified.as_mut().enable();
            match self.take() {
                Taken::Item(i) => {
                    // Another taker may be waiting for the next one.
                    if !self.lock().items.is_empty() {
                        self.notify.notify_one();
                    }
                    return Some(i);
                }
                Taken::Closed => {
                    // Wake the other takers: they see the close too.
                    self.notify.notify_waiters();
                    return None;
                }
                Taken::Empty => notified.await,
            }
        }
    }

    /// No more pushes; what is queued can still be taken.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
    }

    /// Items queued now.
    pub(super) fn len(&self) -> usize {
        self.lock().items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn bounded_in_order_and_closed() {
        let inbox = Inbox::new(2);
        assert_eq!(inbox.take(), Taken::Empty);
        assert!(inbox.push(1).is_ok());
        assert!(inbox.push(2).is_ok());
        assert_eq!(inbox.push(3), Err(3), "full");
        assert_eq!(inbox.len(), 2);
        inbox.close();
        assert_eq!(inbox.push(4), Err(4), "closed");
        assert_eq!(inbox.take(), Taken::Item(1));
        assert_eq!(inbox.take(), Taken::Item(2));
        assert_eq!(inbox.take(), Taken::Closed);
    }

    #[tokio::test]
    async fn waiting_takers_get_items_and_the_close() {
        let inbox = Arc::new(Inbox::new(8));
        let takers: Vec<_> = (0..3)
            .map(|_| {
                let inbox = inbox.clone();
                tokio::spawn(async move {
                    let mut got = vec![];
                    while let Some(i) = inbox.next().await {
                        got.push(i);
                    }
                    got
                })
            })
            .collect();
        tokio::task::yield_now().await;
        for i in 0..5 {
            inbox.push(i).unwrap();
            tokio::task::yield_now().await;
        }
        inbox.close();
        let mut all = vec![];
        for t in takers {
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), t)
                .await
                .expect("every taker sees the close")
                .unwrap();
            all.extend(got);
        }
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
    }
}
