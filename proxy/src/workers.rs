//! The threads that serve clients (`PROXY_WORKERS`): one single-threaded tokio runtime each, as
//! nginx runs one event loop per worker process. A connection is handed to a worker once accepted
//! and stays there with everything it spawns (its upstream connections, its HTTP/2 streams), so
//! that a request and its upstream exchange never cross threads. With tokio's shared multi-threaded
//! runtime, the task that drives a pooled upstream connection could run on the other thread than
//! the client's, and every request woke both (measured in the README's Performance section).
//!
//! Written here because tokio offers a runtime per thread but not a set of them to spread work over.

use std::io;
use std::thread::JoinHandle;

use keepalive_common::accept::Worker;
use tokio::sync::oneshot;

/// Running worker threads; [`Threads::stop`] ends them.
pub struct Threads {
    workers: Vec<Worker>,
    threads: Vec<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Threads {
    /// Starts `count` (at least one) threads, each running its own runtime until stopped.
    pub fn start(count: usize) -> io::Result<Self> {
        let mut workers = Vec::new();
        let mut threads = Vec::new();
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            workers.push(Worker::new(runtime.handle().clone()));
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("proxy-worker-{index}"))
                .spawn(move || {
                    // A current-thread runtime runs its tasks only while something blocks on it.
                    let _ = runtime.block_on(stopped);
                    // What connections left behind (idle upstream connections, their timers)
                    // ends with the runtime, on its own thread.
                    drop(runtime);
                })?;
            threads.push((stop, thread));
        }
        Ok(Self { workers, threads })
    }

    /// Where the accept loop hands connections.
    pub fn spread(&self) -> Vec<Worker> {
        self.workers.clone()
    }

    /// Stops every thread, once the connections it served are done, and waits for them to end.
    pub async fn stop(self) {
        let Self { workers, threads } = self;
        drop(workers);
        let joins: Vec<JoinHandle<()>> = threads
            .into_iter()
            .map(|(stop, thread)| {
                let _ = stop.send(());
                thread
            })
            .collect();
        let joined = tokio::task::spawn_blocking(move || {
            joins
                .into_iter()
                .filter_map(|thread| thread.join().err())
                .count()
        })
        .await;
        if !matches!(joined, Ok(0)) {
            tracing::error!("a worker thread panicked");
        }
    }
}
