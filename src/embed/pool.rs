//! A fixed set of embedding worker threads behind a bounded, two-level queue, for async
//! callers.
//!
//! Owns the worker threads and their rayon pools. Promises: `embed`/`embed_with_spans` await
//! without blocking the executor (the model runs on the workers, the answer comes back on a
//! oneshot channel); at most `queue` jobs of each [`Priority`] wait, further callers wait
//! asynchronously (backpressure); a worker takes a [`Priority::Background`] job only when no
//! [`Priority::Normal`] job waits; each worker runs candle inside its own rayon pool of
//! `threads_per_worker` threads, so N workers use about N × threads_per_worker cores and never
//! fight over the global pool. Dropping the pool lets the workers finish queued work and exit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::{EmbedError, Embedder, SpanEmbedding};

type Reply<T> = oneshot::Sender<Result<T, EmbedError>>;

/// Which jobs the workers take first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// Somebody waits for the answer: taken in arrival order, before any background job.
    Normal,
    /// Nobody waits for it: an estimate a request stores if it is in when the request is
    /// done (see `Grader::grade_in_background`). Taken only when no normal job waits, so it
    /// never delays one, and a job still queued when its caller gives up costs nothing.
    Background,
}

impl Priority {
    fn label(self) -> &'static str {
        match self {
            Priority::Normal => "normal",
            Priority::Background => "background",
        }
    }
}

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

/// A queued job and its place in the queue, given back when a worker takes the job.
struct Queued {
    job: Job,
    _slot: OwnedSemaphorePermit,
}

#[derive(Default)]
struct Waiting {
    normal: VecDeque<Queued>,
    background: VecDeque<Queued>,
    /// The pool was dropped: no more jobs.
    closed: bool,
}

impl Waiting {
    fn jobs(&mut self, priority: Priority) -> &mut VecDeque<Queued> {
        match priority {
            Priority::Normal => &mut self.normal,
            Priority::Background => &mut self.background,
        }
    }

    /// The next job, normal ones first, with the queue length shown in the metrics.
    fn pop(&mut self) -> Option<Job> {
        [Priority::Normal, Priority::Background]
            .into_iter()
            .find_map(|priority| {
                let queued = self.jobs(priority).pop_front()?;
                self.show_length(priority);
                Some(queued.job)
            })
    }

    fn push(&mut self, priority: Priority, queued: Queued) {
        self.jobs(priority).push_back(queued);
        self.show_length(priority);
    }

    fn show_length(&mut self, priority: Priority) {
        let length = self.jobs(priority).len();
        metrics::gauge!("examiner_embed_jobs_queued", "priority" => priority.label())
            .set(length as f64);
    }
}

/// What the callers and the workers share.
struct Queue {
    waiting: Mutex<Waiting>,
    job_queued: Condvar,
    normal_slots: Arc<Semaphore>,
    background_slots: Arc<Semaphore>,
    /// Jobs skipped because their caller had stopped waiting before a worker took them.
    withdrawn: AtomicU64,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        // The lock is never held across user code, so a poisoned lock's data is still whole.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn submit(&self, priority: Priority, job: Job) -> Result<(), EmbedError> {
        let slots = match priority {
            Priority::Normal => &self.normal_slots,
            Priority::Background => &self.background_slots,
        };
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| EmbedError::PoolClosed)?;
        let mut waiting = self.lock();
        if waiting.closed {
            return Err(EmbedError::PoolClosed);
        }
        waiting.push(priority, Queued { job, _slot: slot });
        drop(waiting);
        self.job_queued.notify_one();
        Ok(())
    }

    /// The next job, normal ones first; None once the queue is closed and empty.
    fn next(&self) -> Option<Job> {
        let mut waiting = self.lock();
        loop {
            if let Some(job) = waiting.pop() {
                return Some(job);
            }
            if waiting.closed {
                return None;
            }
            waiting = self
                .job_queued
                .wait(waiting)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Refuse new jobs; queued ones are still done.
    fn close(&self) {
        self.lock().closed = true;
        self.normal_slots.close();
        self.background_slots.close();
        self.job_queued.notify_all();
    }
}

/// N embedding workers sharing one [`Embedder`]; clone-free, share it with an `Arc`.
pub struct EmbedPool {
    queue: Arc<Queue>,
    embedder: Arc<Embedder>,
    workers: usize,
}

impl EmbedPool {
    /// Start `workers` threads (at least 1), each with a rayon pool of `threads_per_worker`
    /// threads (at least 1), and a queue of `queue` waiting jobs of each priority (at least 1).
    /// Two workers × one thread is the fastest layout measured on a 2-core machine.
    pub fn new(
        embedder: Arc<Embedder>,
        workers: usize,
        threads_per_worker: usize,
        queue: usize,
    ) -> Result<EmbedPool, EmbedError> {
        let workers = workers.max(1);
        super::limit_matmul_threads(threads_per_worker);
        let queue = Arc::new(Queue {
            waiting: Mutex::new(Waiting::default()),
            job_queued: Condvar::new(),
            normal_slots: Arc::new(Semaphore::new(queue.max(1))),
            background_slots: Arc::new(Semaphore::new(queue.max(1))),
            withdrawn: AtomicU64::new(0),
        });
        for w in 0..workers {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads_per_worker.max(1))
                .thread_name(move |i| format!("embed-{w}-{i}"))
                .build()
                .map_err(|e| EmbedError::Model(format!("cannot start embedding worker: {e}")))?;
            let queue = queue.clone();
            let embedder = embedder.clone();
            // The worker loop runs *on* a thread of its own rayon pool, so candle's parallel
            // matmuls inside it use only that pool. Dropping the handle is fine: a rayon pool
            // lives until its spawned jobs finish, i.e. until the queue closes.
            pool.spawn(move || worker_loop(&embedder, &queue));
        }
        Ok(EmbedPool {
            queue,
            embedder,
            workers,
        })
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// How many jobs were skipped because their caller had stopped waiting before a worker
    /// took them.
    pub fn withdrawn(&self) -> u64 {
        self.queue.withdrawn.load(Ordering::Relaxed)
    }

    /// The shared embedder (for synchronous use from a blocking thread).
    pub fn embedder(&self) -> &Arc<Embedder> {
        &self.embedder
    }

    /// Embed texts on a worker; see [`Embedder::embed`].
    pub async fn embed(
        &self,
        priority: Priority,
        texts: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let (reply, rx) = oneshot::channel();
        self.queue
            .submit(priority, Job::Plain(texts, reply))
            .await?;
        rx.await.map_err(|_| EmbedError::PoolClosed)?
    }

    /// Embed texts and byte spans of them on a worker; see [`Embedder::embed_with_spans`].
    pub async fn embed_with_spans(
        &self,
        priority: Priority,
        items: Vec<(String, Vec<(usize, usize)>)>,
    ) -> Result<Vec<SpanEmbedding>, EmbedError> {
        let (reply, rx) = oneshot::channel();
        self.queue
            .submit(priority, Job::Spans(items, reply))
            .await?;
        rx.await.map_err(|_| EmbedError::PoolClosed)?
    }
}

impl Drop for EmbedPool {
    fn drop(&mut self) {
        self.queue.close();
    }
}

fn withdraw(withdrawn: &AtomicU64) {
    withdrawn.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("examiner_embed_jobs_withdrawn_total").increment(1);
}

fn worker_loop(embedder: &Embedder, queue: &Queue) {
    while let Some(job) = queue.next() {
        match job {
            // A caller that gave up while its job queued (a request that stopped waiting for
            // an advisory second opinion, say) gets no work done for it.
            job if job.abandoned() => withdraw(&queue.withdrawn),
            Job::Plain(texts, reply) => {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                // The caller may give up while the model runs; nothing to do then.
                let _ = reply.send(embedder.embed(&refs));
            }
            Job::Spans(items, reply) => {
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
        let futs = texts
            .iter()
            .map(|t| pool.embed(Priority::Normal, vec![t.to_string()]));
        let got = futures::future::join_all(futs).await;
        for (t, g) in texts.iter().zip(got) {
            let want = &e.embed(&[t]).unwrap()[0];
            let g = &g.unwrap()[0];
            assert!(g.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5));
        }
    }

    /// The gauge follows each queue on its own. A recorder local to this thread sees only
    /// this test's queue, where the service's shared one also sees every other test's pool.
    #[test]
    fn each_priority_shows_its_own_queue_length() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let shown = recorder.handle();
        let gauge = |priority: &str| -> Option<f64> {
            let series = format!("examiner_embed_jobs_queued{{priority=\"{priority}\"}} ");
            let rendered = shown.render();
            let line = rendered.lines().find(|l| l.starts_with(&series))?;
            line[series.len()..].trim().parse().ok()
        };
        let slots = Arc::new(Semaphore::new(8));
        let queued = || {
            let (reply, _) = oneshot::channel();
            Queued {
                job: Job::Plain(vec!["text".into()], reply),
                _slot: slots.clone().try_acquire_owned().unwrap(),
            }
        };
        let mut waiting = Waiting::default();
        metrics::with_local_recorder(&recorder, || {
            waiting.push(Priority::Background, queued());
            assert_eq!(gauge("normal"), None, "nothing normal was ever queued");
            assert_eq!(gauge("background"), Some(1.0));
            waiting.push(Priority::Normal, queued());
            waiting.push(Priority::Normal, queued());
            assert_eq!(
                (gauge("normal"), gauge("background")),
                (Some(2.0), Some(1.0))
            );
            // Normal jobs leave first, and only their gauge moves.
            waiting.pop().unwrap();
            assert_eq!(
                (gauge("normal"), gauge("background")),
                (Some(1.0), Some(1.0))
            );
            waiting.pop().unwrap();
            waiting.pop().unwrap();
            assert_eq!(
                (gauge("normal"), gauge("background")),
                (Some(0.0), Some(0.0))
            );
            assert!(waiting.pop().is_none());
        });
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
            async move { pool.embed(Priority::Normal, long).await }
        });
        tokio::task::yield_now().await;
        let impatient = tokio::time::timeout(
            std::time::Duration::from_millis(1),
            pool.embed(Priority::Normal, vec!["never computed".to_string()]),
        )
        .await;
        assert!(impatient.is_err(), "the caller gave up while queued");
        let patient = pool
            .embed(Priority::Normal, vec!["computed".to_string()])
            .await
            .unwrap();
        assert_eq!(patient.len(), 1);
        assert_eq!(busy.await.unwrap().unwrap().len(), 64);
        assert_eq!(pool.withdrawn(), 1, "the abandoned job was skipped");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn background_jobs_wait_for_every_normal_job() {
        let pool = Arc::new(EmbedPool::new(test_embedder(), 1, 1, 4).unwrap());
        let batch = |tag: &str| -> Vec<String> {
            (0..16)
                .map(|i| format!("{tag} sentence {i} about stacks, queues and their order"))
                .collect()
        };
        let finished_at = |priority: Priority, texts: Vec<String>| {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.embed(priority, texts).await.unwrap();
                std::time::Instant::now()
            })
        };
        // The one worker is busy with the first job while the rest queue: the background job
        // queues before the two normal ones and still runs after both.
        let busy = finished_at(Priority::Normal, batch("busy"));
        tokio::task::yield_now().await;
        let background = finished_at(Priority::Background, batch("background"));
        tokio::task::yield_now().await;
        let first = finished_at(Priority::Normal, batch("first"));
        let second = finished_at(Priority::Normal, batch("second"));
        let busy = busy.await.unwrap();
        let (background, first, second) = (
            background.await.unwrap(),
            first.await.unwrap(),
            second.await.unwrap(),
        );
        assert!(
            busy < first && first < second,
            "normal jobs in arrival order"
        );
        assert!(
            second < background,
            "the background job ran last: {:?} after the last normal one",
            background.saturating_duration_since(second)
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_dropped_pool_finishes_its_queued_jobs() {
        let pool = EmbedPool::new(test_embedder(), 1, 1, 4).unwrap();
        let queue = pool.queue.clone();
        // The one worker is busy with the first job, so the second is still queued when the
        // pool is dropped.
        let long: Vec<String> = (0..64)
            .map(|i| format!("sentence {i} about stacks, queues and the order items leave in"))
            .collect();
        let (busy_reply, busy) = oneshot::channel();
        queue
            .submit(Priority::Normal, Job::Plain(long, busy_reply))
            .await
            .unwrap();
        let (reply, rx) = oneshot::channel();
        queue
            .submit(
                Priority::Background,
                Job::Plain(vec!["late".to_string()], reply),
            )
            .await
            .unwrap();
        let still_queued = queue.lock().background.len();
        drop(pool);
        assert_eq!(still_queued, 1, "the worker had not reached the job");
        assert_eq!(busy.await.unwrap().unwrap().len(), 64);
        assert_eq!(rx.await.unwrap().unwrap().len(), 1);
        let (reply, _rx) = oneshot::channel();
        let refused = queue
            .submit(
                Priority::Normal,
                Job::Plain(vec!["after".to_string()], reply),
            )
            .await;
        assert!(matches!(refused, Err(EmbedError::PoolClosed)));
    }
}
