//! A fixed set of embedding worker threads behind a bounded queue, for async callers.
//!
//! Owns the worker threads and their rayon pools. Promises: `embed`/`embed_with_spans` await
//! without blocking the executor (the model runs on the workers, the answer comes back on a
//! oneshot channel); at most `queue` requests wait, further callers wait asynchronously
//! (backpressure); each worker runs candle inside its own rayon pool of `threads_per_worker`
//! threads, so N workers use about N × threads_per_worker cores and never fight over the
//! global pool. Dropping the pool lets the workers finish queued work and exit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::{EmbedError, Embedder, SpanEmbedding};

type Reply<T> = oneshot::Sender<Result<T, EmbedError>>;

enum Job {
    Plain(Vec<String>, Reply<Vec<Vec<f32>>>),
    Spans(
        Vec<(String, Vec<(usize, usize)>)>,
        Reply<Vec<SpanEmbedding>>,
    ),
}

impl Job {
    /// The caller dropped its end of the reply channel.
    fn abandoned(&self) -> bool {
        match self {
            Job::Plain(_, reply) => reply.is_closed(),
            Job::Spans(_, reply) => reply.is_closed(),
        }
    }
}

/// N embedding workers sharing one [`Embedder`]; clone-free, share it with an `Arc`.
pub struct EmbedPool {
    tx: mpsc::Sender<Job>,
    embedder: Arc<Embedder>,
    workers: usize,
    /// Jobs skipped because their caller had stopped waiting before a worker took them.
    withdrawn: Arc<AtomicU64>,
}

impl EmbedPool {
    /// Start `workers` threads (at least 1), each with a rayon pool of `threads_per_worker`
    /// threads (at least 1), and a queue of `queue` waiting requests (at least 1).
    /// Two workers × one thread is the fastest layout measured on a 2-core machine.
    pub fn new(
        embedder: Arc<Embedder>,
        workers: usize,
        threads_per_worker: usize,
        queue: usize,
    ) -> Result<EmbedPool, EmbedError> {
        let workers = workers.max(1);
        super::limit_matmul_threads(threads_per_worker);
        let (tx, rx) = mpsc::channel::<Job>(queue.max(1));
        // tokio's receiver has one consumer; the workers take turns holding it.
        let rx = Arc::new(Mutex::new(rx));
        let withdrawn = Arc::new(AtomicU64::new(0));
        for w in 0..workers {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads_per_worker.max(1))
                .thread_name(move |i| format!("embed-{w}-{i}"))
                .build()
                .map_err(|e| EmbedError::Model(format!("cannot start embedding worker: {e}")))?;
            let rx = rx.clone();
            let embedder = embedder.clone();
            let withdrawn = withdrawn.clone();
            // The worker loop runs *on* a thread of its own rayon pool, so candle's parallel
            // matmuls inside it use only that pool. Dropping the handle is fine: a rayon pool
            // lives until its spawned jobs finish, i.e. until the queue closes.
            pool.spawn(move || worker_loop(&embedder, &rx, &withdrawn));
        }
        Ok(EmbedPool {
            tx,
            embedder,
            workers,
            withdrawn,
        })
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// How many jobs were skipped because their caller had stopped waiting before a worker
    /// took them.
    pub fn withdrawn(&self) -> u64 {
        self.withdrawn.load(Ordering::Relaxed)
    }

    /// The shared embedder (for synchronous use from a blocking thread).
    pub fn embedder(&self) -> &Arc<Embedder> {
        &self.embedder
    }

    /// Embed texts on a worker; see [`Embedder::embed`].
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Plain(texts, reply))
            .await
            .map_err(|_| EmbedError::PoolClosed)?;
        rx.await.map_err(|_| EmbedError::PoolClosed)?
    }

    /// Embed texts and byte spans of them on a worker; see [`Embedder::embed_with_spans`].
    pub async fn embed_with_spans(
        &self,
        items: Vec<(String, Vec<(usize, usize)>)>,
    ) -> Result<Vec<SpanEmbedding>, EmbedError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Spans(items, reply))
            .await
            .map_err(|_| EmbedError::PoolClosed)?;
        rx.await.map_err(|_| EmbedError::PoolClosed)?
    }
}

fn withdraw(withdrawn: &AtomicU64) {
    withdrawn.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("examiner_embed_jobs_withdrawn_total").increment(1);
}

fn worker_loop(embedder: &Embedder, rx: &Mutex<mpsc::Receiver<Job>>, withdrawn: &AtomicU64) {
    loop {
        let job = {
            let Ok(mut guard) = rx.lock() else { return };
            guard.blocking_recv()
        };
        match job {
            None => return,
            // A caller that gave up while its job queued (a request that stopped waiting for
            // an advisory second opinion, say) gets no work done for it.
            Some(job) if job.abandoned() => withdraw(withdrawn),
            Some(Job::Plain(texts, reply)) => {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                // The caller may give up while the model runs; nothing to do then.
                let _ = reply.send(embedder.embed(&refs));
            }
            Some(Job::Spans(items, reply)) => {
                let refs: Vec<(&str, &[(usize, usize)])> = items
                    .iter()
                    .map(|(t, s)| (t.as_str(), s.as_slice()))
                    .collect();
                let _ = reply.send(embedder.embed_with_spans(&refs));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::test_embedder;
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn pool_matches_direct_calls() {
        let e = test_embedder();
        let pool = EmbedPool::new(e.clone(), 2, 1, 4).unwrap();
        let texts = [
            "one small step",
            "a giant leap for mankind",
            "queues are FIFO",
        ];
        let futs = texts.iter().map(|t| pool.embed(vec![t.to_string()]));
        let got = futures::future::join_all(futs).await;
        for (t, g) in texts.iter().zip(got) {
            let want = &e.embed(&[t]).unwrap()[0];
            let g = &g.unwrap()[0];
            assert!(g.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5));
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn work_for_a_caller_that_stopped_waiting_is_skipped() {
        let pool = Arc::new(EmbedPool::new(test_embedder(), 1, 1, 4).unwrap());
        // Keeps the one worker busy for far longer than the impatient caller waits.
        let long: Vec<String> = (0..64)
            .map(|i| format!("sentence {i} about stacks, queues and the order items leave in"))
            .collect();
        let busy = tokio::spawn({
            let pool = pool.clone();
            async move { pool.embed(long).await }
        });
        tokio::task::yield_now().await;
        let impatient = tokio::time::timeout(
            std::time::Duration::from_millis(1),
            pool.embed(vec!["never computed".to_string()]),
        )
        .await;
        assert!(impatient.is_err(), "the caller gave up while queued");
        let patient = pool.embed(vec!["computed".to_string()]).await.unwrap();
        assert_eq!(patient.len(), 1);
        assert_eq!(busy.await.unwrap().unwrap().len(), 64);
        assert_eq!(pool.withdrawn(), 1, "the abandoned job was skipped");
    }
}
