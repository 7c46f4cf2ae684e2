//! Memoisation of validated stage replies under a content address, so an identical answer to
//! the same question (same standard answer, marks, model and prompt version) costs no LLM call.
//! Owns the key derivation ([`cache_key`]) and the [`ReplyCache`] implementations: an
//! in-memory one with a size bound, one backed by the store, and [`NoCache`]. Only validated replies are ever stored; failures
//! never are (the caller guarantees it).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::client::ChatMessage;
use super::prompts::PROMPT_VERSION;
use super::{ReplyCache, StageRole};
use crate::store::Store;

/// Hex SHA-256 over (role, model, [`PROMPT_VERSION`], the full rendered messages). The parts
/// are serialised as one JSON array, so no two different inputs share an encoding.
///
/// The parts stream straight into the hash: a tuple serialises as the same JSON array as
/// `json!([...])` did (a message's fields are declared in sorted order), so keys are unchanged
/// but each stage no longer copies its whole prompt into a `Value` and a buffer first.
pub(crate) fn cache_key(role: StageRole, model: &str, messages: &[ChatMessage]) -> String {
    let mut hasher = HashWriter(Sha256::new());
    // Writing into a hasher cannot fail, and these types always serialise.
    let _ = serde_json::to_writer(
        &mut hasher,
        &(role.as_str(), model, PROMPT_VERSION, messages),
    );
    hex::encode(hasher.0.finalize())
}

struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Process-local cache; oldest entries are evicted first once `capacity` is reached.
pub struct MemoryReplyCache {
    capacity: usize,
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    map: HashMap<String, Value>,
    order: VecDeque<String>,
}

impl MemoryReplyCache {
    /// Holds up to 10,000 replies.
    pub fn new() -> Self {
        Self::with_capacity(10_000)
    }

    pub fn with_capacity(capacity: usize) -> Self {
        MemoryReplyCache {
            capacity: capacity.max(1),
            inner: Mutex::new(MemoryInner::default()),
        }
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for MemoryReplyCache {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl ReplyCache for MemoryReplyCache {
    async fn get(&self, key: &str) -> Option<Value> {
        self.lock().map.get(key).cloned()
    }

    async fn put(&self, key: &str, value: &Value) {
        let mut inner = self.lock();
        if inner.map.insert(key.to_string(), value.clone()).is_none() {
            inner.order.push_back(key.to_string());
        }
        while inner.map.len() > self.capacity {
            match inner.order.pop_front() {
                Some(oldest) => {
                    inner.map.remove(&oldest);
                }
                None => break,
            }
        }
    }
}

/// Remembers nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCache;

#[async_trait]
impl ReplyCache for NoCache {
    async fn get(&self, _key: &str) -> Option<Value> {
        None
    }

    async fn put(&self, _key: &str, _value: &Value) {}
}

/// Replies kept in memory in front of the store (under 1 KiB each).
const RECENT_REPLIES: usize = 10_000;
/// Replies waiting to be written; when full, `put` waits for room (backpressure, no loss).
const PENDING_WRITES: usize = 8_192;
/// Most replies written in one transaction.
const WRITE_BATCH: usize = 4_096;
/// How long the writer lets replies gather before writing what came. Keys are hashes, so
/// every row lands on a random page of the memo's index, and rows written in one
/// transaction share the pages they dirty: fewer, larger batches write fewer pages.
/// Replies are served from memory (`recent`) meanwhile.
const WRITE_LINGER: Duration = Duration::from_millis(250);
/// Up to this many stored keys are held in memory (8 bytes each) to answer misses without a
/// query; a larger memo is read through on every miss. Loading reads the full hex keys first,
/// about 90 MB at this limit, once at start.
const KNOWN_KEYS_LIMIT: usize = 1_000_000;
/// The namespace of LLM replies among the store's memoised values.
const NAMESPACE: &str = "llm";

/// Replies queued for the store by every [`StoreReplyCache`] of the process, so that
/// shutdown can wait for them.
static PENDING_REPLY_WRITES: AtomicUsize = AtomicUsize::new(0);

/// Waits until the queued replies are written, or `limit` has passed.
pub async fn flush_reply_writes(limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while PENDING_REPLY_WRITES.load(Ordering::Acquire) > 0 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                pending = PENDING_REPLY_WRITES.load(Ordering::Acquire),
                "LLM cache writes still queued at shutdown; they are dropped"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// LLM replies memoised in the store, so identical answers cost no second call even
/// across restarts.
///
/// The store stays off the grading critical path (BENCHMARKS.md, "Evaluate: three-stage
/// grading under load"), where one query per stage lookup and one INSERT per stage reply
/// capped throughput at SQLite's single write lock:
/// - a bounded in-memory front answers repeats without a query;
/// - the keys the store holds are known in memory (loaded once at start, then kept up to
///   date by `put`), so a miss — nearly every lookup of new work — asks nothing;
/// - one background task writes the replies, draining its queue into one transaction at
///   a time, so a burst of stages costs one write rather than one each.
///
/// A reply is visible to this process as soon as `put` returns and reaches the store
/// moments later; the server waits for the queue on shutdown ([`flush_reply_writes`]).
/// Another process writing the same database is not seen by the key set: that costs at
/// most a repeated LLM call, never a wrong reply.
pub struct StoreReplyCache {
    store: Arc<dyn Store>,
    recent: MemoryReplyCache,
    known: Arc<Mutex<KnownKeys>>,
    /// `None` outside a Tokio runtime: then writes are made inline.
    writes: Option<tokio::sync::mpsc::Sender<(String, String)>>,
}

/// Short forms of the keys the store holds. Until `complete`, a miss here proves nothing.
#[derive(Default)]
struct KnownKeys {
    complete: bool,
    keys: HashSet<u64>,
}

/// The first 64 bits of a hex SHA-256 key; a collision only sends a lookup to the store.
fn short_key(key: &str) -> Option<u64> {
    key.get(..16)
        .and_then(|prefix| u64::from_str_radix(prefix, 16).ok())
}

impl StoreReplyCache {
    pub fn new(store: Arc<dyn Store>) -> Self {
        let known = Arc::new(Mutex::new(KnownKeys::default()));
        let writes = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            runtime.spawn(load_known_keys(store.clone(), known.clone()));
            let (sender, mut queue) =
                tokio::sync::mpsc::channel::<(String, String)>(PENDING_WRITES);
            let store = store.clone();
            runtime.spawn(async move {
                let mut batch = Vec::with_capacity(WRITE_BATCH);
                while queue.recv_many(&mut batch, WRITE_BATCH).await > 0 {
                    tokio::time::sleep(WRITE_LINGER).await;
                    while batch.len() < WRITE_BATCH {
                        match queue.try_recv() {
                            Ok(entry) => batch.push(entry),
                            Err(_) => break,
                        }
                    }
                    write_replies(store.as_ref(), &batch).await;
                    PENDING_REPLY_WRITES.fetch_sub(batch.len(), Ordering::AcqRel);
                    batch.clear();
                }
            });
            sender
        });
        StoreReplyCache {
            store,
            recent: MemoryReplyCache::with_capacity(RECENT_REPLIES),
            known,
            writes,
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, KnownKeys> {
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// True when the store certainly lacks `key`.
    fn surely_absent(&self, key: &str) -> bool {
        let known = self.known();
        known.complete && short_key(key).is_some_and(|short| !known.keys.contains(&short))
    }
}

async fn load_known_keys(store: Arc<dyn Store>, known: Arc<Mutex<KnownKeys>>) {
    match store.cache_keys(NAMESPACE, KNOWN_KEYS_LIMIT).await {
        Ok(Some(keys)) => {
            let mut known = known.lock().unwrap_or_else(|p| p.into_inner());
            // Keys `put` added meanwhile are already in the set; nothing is lost.
            known.keys.extend(keys.iter().filter_map(|key| short_key(key)));
            known.complete = true;
        }
        Ok(None) => tracing::info!(
            limit = KNOWN_KEYS_LIMIT,
            "the LLM reply memo holds more keys than are kept in memory; misses are read from the store"
        ),
        Err(e) => tracing::warn!(error = %e, "could not list the LLM reply memo; misses are read from the store"),
    }
}

async fn write_replies(store: &dyn Store, entries: &[(String, String)]) {
    if let Err(e) = store.cache_put_many(NAMESPACE, entries).await {
        tracing::warn!(error = %e, replies = entries.len(), "LLM cache write failed");
    }
}

#[async_trait]
impl ReplyCache for StoreReplyCache {
    async fn get(&self, key: &str) -> Option<Value> {
        if let Some(value) = self.recent.get(key).await {
            return Some(value);
        }
        if self.surely_absent(key) {
            return None;
        }
        match self.store.cache_get(NAMESPACE, key).await {
            Ok(Some(text)) => {
                let value: Value = serde_json::from_str(&text).ok()?;
                self.recent.put(key, &value).await;
                Some(value)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "LLM cache read failed");
                None
            }
        }
    }

    async fn put(&self, key: &str, value: &Value) {
        self.recent.put(key, value).await;
        if let Some(short) = short_key(key) {
            self.known().keys.insert(short);
        }
        let entry = (key.to_string(), value.to_string());
        match &self.writes {
            // Reserving first keeps the count exact even if this future is dropped while
            // waiting for room.
            Some(writes) => match writes.reserve().await {
                Ok(slot) => {
                    PENDING_REPLY_WRITES.fetch_add(1, Ordering::AcqRel);
                    slot.send(entry);
                }
                // The writer is gone (the runtime is shutting down): write inline.
                Err(_) => write_replies(self.store.as_ref(), &[entry]).await,
            },
            None => write_replies(self.store.as_ref(), &[entry]).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open_store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
        let url = format!("sqlite://{}", dir.path().join("memo.db").display());
        crate::store::open(&url).await.unwrap()
    }

    fn key(n: u32) -> String {
        hex::encode(Sha256::digest(n.to_le_bytes()))
    }

    async fn wait_until_known(cache: &StoreReplyCache) {
        for _ in 0..500 {
            if cache.known().complete {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("the stored keys were never loaded");
    }

    #[tokio::test]
    async fn replies_written_in_batches_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(&dir).await;
        let cache = StoreReplyCache::new(store.clone());
        for n in 0..1_200 {
            cache.put(&key(n), &serde_json::json!({ "n": n })).await;
        }
        // Other tests share the process-wide count of queued writes, so wait on the store.
        let mut stored = 0;
        for _ in 0..1_000 {
            stored = store
                .cache_keys(NAMESPACE, 10_000)
                .await
                .unwrap()
                .unwrap()
                .len();
            if stored == 1_200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(stored, 1_200);

        let reopened = StoreReplyCache::new(store);
        wait_until_known(&reopened).await;
        for n in [0, 511, 512, 1_199] {
            assert_eq!(
                reopened.get(&key(n)).await,
                Some(serde_json::json!({ "n": n }))
            );
        }
        assert_eq!(reopened.get(&key(5_000)).await, None);
    }

    #[tokio::test]
    async fn a_miss_known_at_start_asks_the_store_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(&dir).await;
        store
            .cache_put(NAMESPACE, &key(1), r#"{"n":1}"#)
            .await
            .unwrap();
        let cache = StoreReplyCache::new(store.clone());
        wait_until_known(&cache).await;
        assert!(!cache.surely_absent(&key(1)));
        assert!(cache.surely_absent(&key(2)));
        // Written behind this process's back after the keys were loaded: invisible to it,
        // which proves the miss was answered from memory.
        store
            .cache_put(NAMESPACE, &key(2), r#"{"n":2}"#)
            .await
            .unwrap();
        assert_eq!(cache.get(&key(2)).await, None);
        assert_eq!(
            cache.get(&key(1)).await,
            Some(serde_json::json!({ "n": 1 }))
        );
    }

    #[tokio::test]
    async fn a_memo_too_large_to_hold_is_read_through() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(&dir).await;
        let entries: Vec<(String, String)> = (0..3)
            .map(|n| (key(n), format!(r#"{{"n":{n}}}"#)))
            .collect();
        store.cache_put_many(NAMESPACE, &entries).await.unwrap();
        assert_eq!(store.cache_keys(NAMESPACE, 2).await.unwrap(), None);
        assert_eq!(
            store
                .cache_keys(NAMESPACE, 3)
                .await
                .unwrap()
                .map(|k| k.len()),
            Some(3)
        );
        assert_eq!(store.cache_keys("other", 3).await.unwrap(), Some(vec![]));
    }

    #[test]
    fn keys_are_those_of_the_json_array_encoding() {
        let messages = vec![
            ChatMessage::system("Grade. \"Quotes\", ünïcode, <<<delimiters>>>"),
            ChatMessage::user("line one\nline two"),
        ];
        let material = serde_json::json!([
            StageRole::Verifier.as_str(),
            "model-x",
            PROMPT_VERSION,
            messages
        ]);
        let expected = hex::encode(Sha256::digest(serde_json::to_vec(&material).unwrap()));
        assert_eq!(
            cache_key(StageRole::Verifier, "model-x", &messages),
            expected
        );
        assert_ne!(
            cache_key(StageRole::Evaluator, "model-x", &messages),
            expected
        );
    }

    #[test]
    fn short_keys_come_from_the_hex_prefix() {
        assert_eq!(short_key("00000000000000ff00"), Some(255));
        assert_eq!(short_key("not hex at all, no"), None);
        assert_eq!(short_key("abc"), None);
    }
}
