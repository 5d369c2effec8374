//! Single-threaded runtimes ("shards") that each own whole QUIC connections.
//!
//! quinn drives a connection from one task. On a multi-thread runtime that
//! task and the tasks of the connection's streams land on different worker
//! threads, and every packet then costs a cross-thread wake-up. A shard is
//! one thread running a current-thread tokio runtime: a connection whose
//! handler is spawned on a shard has its quinn driver (quinn spawns it on
//! the runtime that accepts the connection), its streams and their TCP
//! sockets all on that thread. Connections are spread over the shards,
//! least loaded first, so several connections use several cores.
//!
//! Measured with the bench on 2 cores: router CPU per GiB 1.71 → 1.27 s
//! (docs/benchmarks.md).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

/// A set of shard threads; they stop when this is dropped (tasks still on
/// them are dropped).
#[derive(Debug)]
pub struct Shards {
    shards: Vec<Shard>,
}

#[derive(Debug)]
struct Shard {
    handle: Handle,
    /// Tasks spawned through [`Shards::spawn`] and still running.
    load: Arc<AtomicUsize>,
    /// Dropping it ends the thread.
    _stop: oneshot::Sender<()>,
}

/// Decrements a shard's load when its task ends or is dropped.
struct LoadGuard(Arc<AtomicUsize>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shards {
    /// Starts `n` shard threads (at least one), named `name-0`, `name-1`, ...
    pub fn new(n: usize, name: &str) -> std::io::Result<Shards> {
        let mut shards = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            shards.push(Shard {
                handle,
                load: Arc::new(AtomicUsize::new(0)),
                _stop: stop,
            });
        }
        Ok(Shards { shards })
    }

    /// The first shard's runtime. Create a quinn endpoint inside it
    /// (`let _g = shards.first().enter();`) and its driver, which receives
    /// for every connection, runs there: a connection on that shard (the
    /// first one placed) then never changes thread at all.
    pub fn first(&self) -> &Handle {
        &self.shards[0].handle
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Always false: there is at least one shard.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// Spawns `task` into `set`, on the shard with the fewest tasks now.
    pub fn spawn<F>(&self, set: &mut JoinSet<F::Output>, task: F)
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let Some(shard) = self
            .shards
            .iter()
            .min_by_key(|s| s.load.load(Ordering::Relaxed))
        else {
            // `new` makes at least one; keep the task rather than lose it.
            set.spawn(task);
            return;
        };
        shard.load.fetch_add(1, Ordering::Relaxed);
        let guard = LoadGuard(shard.load.clone());
        set.spawn_on(
            async move {
                let _guard = guard;
                task.await
            },
            &shard.handle,
        );
    }

    /// Tasks running on each shard, in shard order.
    pub fn loads(&self) -> Vec<usize> {
        self.shards
            .iter()
            .map(|s| s.load.load(Ordering::Relaxed))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_are_spread_and_run_on_shard_threads() {
        let shards = Shards::new(3, "test-shard").expect("shards");
        assert_eq!(shards.len(), 3);
        let mut set = JoinSet::new();
        let (release, wait) = tokio::sync::watch::channel(false);
        for _ in 0..6 {
            let mut wait = wait.clone();
            shards.spawn(&mut set, async move {
                let _ = wait.wait_for(|r| *r).await;
                std::thread::current().name().map(str::to_string)
            });
        }
        assert_eq!(shards.loads(), vec![2, 2, 2]);
        release.send(true).expect("release");
        let mut names = Vec::new();
        while let Some(r) = set.join_next().await {
            names.push(r.expect("task").expect("thread name"));
        }
        names.sort();
        names.dedup();
        assert_eq!(names, ["test-shard-0", "test-shard-1", "test-shard-2"]);
        assert_eq!(shards.loads(), vec![0, 0, 0]);
    }

    #[tokio::test]
    async fn dropping_the_shards_drops_their_tasks() {
        let shards = Shards::new(1, "test-drop").expect("shards");
        let mut set = JoinSet::new();
        let (tx, rx) = oneshot::channel::<()>();
        shards.spawn(&mut set, async move {
            let _tx = tx;
            std::future::pending::<()>().await
        });
        drop(shards);
        // The task (and with it the sender) is dropped when its thread's
        // runtime ends.
        assert!(tokio::time::timeout(std::time::Duration::from_secs(5), rx)
            .await
            .expect("task dropped within 5 s")
            .is_err());
    }
}
