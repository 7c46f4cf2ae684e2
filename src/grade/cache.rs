//! Memoisation of validated stage replies under a content address, so an identical answer to
//! the same question (same standard answer, marks, model and prompt version) costs no LLM call.
//! Owns the key derivation ([`cache_key`]) and the [`ReplyCache`] implementations: an
//! in-memory one with a size bound, one backed by the store, and [`NoCache`]. Only validated replies are ever stored; failures
//! never are (the caller guarantees it).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::client::{Conversation, Opening};
use super::prompts::PROMPT_VERSION;
use super::{ReplyCache, StageRole};
use crate::store::Store;

/// Hex SHA-256 over (role, model, [`PROMPT_VERSION`], the full rendered messages). The parts
/// are serialised as one JSON array, so no two different inputs share an encoding; the
/// messages go in as the conversation encoded them, the same bytes as `json!([...])` of them
/// gave (a message's fields are declared in sorted order), so keys are unchanged.
///
/// Most conversations open with a role's system message, about half of what is hashed: the
/// hash state after it is kept per role, system message and model, and each key goes on from
/// a copy of it.
pub(crate) fn cache_key(role: StageRole, model: &str, conversation: &Conversation) -> String {
    let messages = conversation.json().get();
    let (mut hasher, rest) = match conversation.opening() {
        Some(opening) => {
            let (common, rest) = messages.split_at(opening.bytes);
            (opening_state(role, model, opening, common), rest)
        }
        None => (key_head(role, model), messages),
    };
    hasher.update(rest);
    hasher.update(b"]");
    hex::encode(hasher.finalize())
}

/// The hash of `["role","model","version",`: the key's array up to its messages.
fn key_head(role: StageRole, model: &str) -> Sha256 {
    let mut head = serde_json::to_vec(&(role.as_str(), model, PROMPT_VERSION))
        .expect("strings always serialise");
    // `["role","model","version"]` → `["role","model","version",`
    head.pop();
    head.push(b',');
    Sha256::new_with_prefix(head)
}

/// [`key_head`] and the messages' common start, hashed once per role, system message and
/// model.
fn opening_state(role: StageRole, model: &str, opening: Opening, common: &str) -> Sha256 {
    type States = HashMap<(StageRole, usize), Vec<(String, Sha256)>>;
    static STATES: std::sync::LazyLock<Mutex<States>> = std::sync::LazyLock::new(Mutex::default);
    /// A process serves a few models per role; a bound keeps a stream of ad hoc model names
    /// from growing the map.
    const MODELS_PER_ROLE: usize = 16;
    let mut states = STATES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let per_model = states.entry((role, opening.system_prompt)).or_default();
    if let Some((_, state)) = per_model.iter().find(|(name, _)| name == model) {
        return state.clone();
    }
    let mut state = key_head(role, model);
    state.update(common);
    if per_model.len() >= MODELS_PER_ROLE {
        per_model.clear();
    }
    per_model.push((model.to_string(), state.clone()));
    state
}

/// Process-local cache; oldest entries are evicted first once `capacity` is reached.
///
/// Replies are held as JSON text: nearly every reply under load is new, so each `put` costs
/// one serialisation (which the store needs anyway) rather than a copy of the reply's tree,
/// and only the rare hit pays for parsing.
pub struct MemoryReplyCache {
    capacity: usize,
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    map: HashMap<Arc<str>, Arc<str>>,
    order: VecDeque<Arc<str>>,
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

    fn clear(&self) {
        let mut inner = self.lock();
        inner.map.clear();
        inner.order.clear();
    }

    fn get_text(&self, key: &str) -> Option<Arc<str>> {
        self.lock().map.get(key).cloned()
    }

    fn put_text(&self, key: &str, text: Arc<str>) {
        let mut inner = self.lock();
        let key: Arc<str> = Arc::from(key);
        if inner.map.insert(key.clone(), text).is_none() {
            inner.order.push_back(key);
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

/// A reply as memoised text; `None` (with a warning) for text that is not JSON.
fn parse_reply(text: &str) -> Option<Value> {
    serde_json::from_str(text)
        .inspect_err(|e| tracing::warn!(error = %e, "ignoring a memoised reply that is not JSON"))
        .ok()
}

impl Default for MemoryReplyCache {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl ReplyCache for MemoryReplyCache {
    async fn get(&self, key: &str) -> Option<Value> {
        parse_reply(&self.get_text(key)?)
    }

    async fn put(&self, key: &str, value: &Value) {
        self.put_text(key, Arc::from(value.to_string()));
    }

    fn forget_in_memory(&self) {
        self.clear();
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
/// How long the writer lets replies gather before writing what came: one transaction per
/// batch, so fewer, larger batches cost fewer commits and fill the log's last pages whole
/// (BENCHMARKS.md, steps 11 and 14). Replies are served from memory (`recent`) meanwhile.
const WRITE_LINGER: Duration = Duration::from_millis(250);
/// The namespace of LLM replies among the store's memoised values.
const NAMESPACE: &str = crate::store::LLM_MEMO;

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
/// - the store answers a miss — nearly every lookup of new work — from its own index in
///   memory, without a query;
/// - one background task writes the replies, draining its queue into one transaction at
///   a time, so a burst of stages costs one write rather than one each.
///
/// A reply is visible to this process as soon as `put` returns and reaches the store
/// moments later; the server waits for the queue on shutdown ([`flush_reply_writes`]).
pub struct StoreReplyCache {
    store: Arc<dyn Store>,
    recent: MemoryReplyCache,
    /// `None` outside a Tokio runtime: then writes are made inline.
    writes: Option<tokio::sync::mpsc::Sender<(String, String)>>,
    /// Replies handed to the writer, and replies it has written (or failed to): the queue
    /// is first in, first out, so once `written` reaches a value `queued` had, everything
    /// queued by then is through.
    queued: AtomicU64,
    written: Arc<AtomicU64>,
}

impl StoreReplyCache {
    pub fn new(store: Arc<dyn Store>) -> Self {
        let written = Arc::new(AtomicU64::new(0));
        let writes = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            let (sender, mut queue) =
                tokio::sync::mpsc::channel::<(String, String)>(PENDING_WRITES);
            let store = store.clone();
            let written = written.clone();
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
                    written.fetch_add(batch.len() as u64, Ordering::Release);
                    batch.clear();
                }
            });
            sender
        });
        StoreReplyCache {
            store,
            recent: MemoryReplyCache::with_capacity(RECENT_REPLIES),
            writes,
            queued: AtomicU64::new(0),
            written,
        }
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
        if let Some(text) = self.recent.get_text(key) {
            return parse_reply(&text);
        }
        match self.store.cache_get(NAMESPACE, key).await {
            Ok(Some(text)) => {
                let value = parse_reply(&text)?;
                self.recent.put_text(key, Arc::from(text));
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
        let text = value.to_string();
        self.recent.put_text(key, Arc::from(text.as_str()));
        let entry = (key.to_string(), text);
        match &self.writes {
            // Reserving first keeps the count exact even if this future is dropped while
            // waiting for room.
            Some(writes) => match writes.reserve().await {
                Ok(slot) => {
                    PENDING_REPLY_WRITES.fetch_add(1, Ordering::AcqRel);
                    slot.send(entry);
                    self.queued.fetch_add(1, Ordering::Release);
                }
                // The writer is gone (the runtime is shutting down): write inline.
                Err(_) => write_replies(self.store.as_ref(), &[entry]).await,
            },
            None => write_replies(self.store.as_ref(), &[entry]).await,
        }
    }

    async fn settle(&self, limit: Duration) -> bool {
        let queued = self.queued.load(Ordering::Acquire);
        let deadline = tokio::time::Instant::now() + limit;
        while self.written.load(Ordering::Acquire) < queued {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    fn forget_in_memory(&self) {
        self.recent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grade::client::ChatMessage;
    use crate::grade::prompts::system_prompt;

    async fn open_store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
        let url = format!("sqlite://{}", dir.path().join("memo.db").display());
        crate::store::open(&url).await.unwrap()
    }

    fn key(n: u32) -> String {
        hex::encode(Sha256::digest(n.to_le_bytes()))
    }

    #[tokio::test]
    async fn replies_written_in_batches_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(&dir).await;
        let cache = StoreReplyCache::new(store.clone());
        for n in 0..1_200 {
            cache.put(&key(n), &serde_json::json!({ "n": n })).await;
        }
        // Other tests share the process-wide count of queued writes, so wait on the store:
        // the last reply queued is the last one written.
        let last = key(1_199);
        let mut stored = false;
        for _ in 0..1_000 {
            if store.cache_get(NAMESPACE, &last).await.unwrap().is_some() {
                stored = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(stored, "the queued replies never reached the store");

        // A new process: the store opened afresh from its files, an empty front.
        let reopened = StoreReplyCache::new(open_store(&dir).await);
        for n in 0..1_200 {
            assert_eq!(
                reopened.get(&key(n)).await,
                Some(serde_json::json!({ "n": n }))
            );
        }
        assert_eq!(reopened.get(&key(5_000)).await, None);
    }

    #[tokio::test]
    async fn settling_writes_what_is_queued_and_forgetting_empties_the_front() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(&dir).await;
        let cache = StoreReplyCache::new(store.clone());
        for n in 0..10 {
            cache.put(&key(n), &serde_json::json!({ "n": n })).await;
        }
        // Queued for a write that lingers for 250 ms first; settling waits for it.
        assert!(cache.settle(Duration::from_secs(10)).await);
        for n in 0..10 {
            assert!(store.cache_get(NAMESPACE, &key(n)).await.unwrap().is_some());
        }
        assert_eq!(cache.recent.len(), 10);

        // With the store's copy gone, so is the reply once the front is dropped.
        store.cache_forget(NAMESPACE, &[key(3)]).await.unwrap();
        assert!(cache.get(&key(3)).await.is_some(), "still in memory");
        cache.forget_in_memory();
        assert!(cache.recent.is_empty());
        assert_eq!(cache.get(&key(3)).await, None);
        assert_eq!(
            cache.get(&key(4)).await,
            Some(serde_json::json!({ "n": 4 }))
        );
    }

    #[test]
    fn keys_are_those_of_the_json_array_encoding() {
        // Keys written by earlier builds must still find their replies: the key is the hash of
        // the (role, model, version, messages) array however the messages were encoded, also
        // for the roles' own system messages (copied in pre-encoded) and after a re-ask.
        let mut asked_again = Conversation::new(vec![
            ChatMessage::system(system_prompt(StageRole::Evaluator)),
            ChatMessage::user("answer"),
        ]);
        asked_again.push(ChatMessage::assistant("{\"marks\": \"x\"}"));
        asked_again.push(ChatMessage::user("Your previous reply was invalid."));
        let conversations = [
            Conversation::new(vec![
                ChatMessage::system("Grade. \"Quotes\", ünïcode, <<<delimiters>>>"),
                ChatMessage::user("line one\nline two"),
            ]),
            Conversation::new(vec![
                ChatMessage::system(system_prompt(StageRole::Verifier)),
                ChatMessage::user("line one\nline two"),
            ]),
            asked_again,
            // The same system message alone, then followed by others: one saved state must
            // serve both.
            Conversation::new(vec![ChatMessage::system(system_prompt(StageRole::Arbiter))]),
            Conversation::new(vec![
                ChatMessage::system(system_prompt(StageRole::Arbiter)),
                ChatMessage::user("answer"),
            ]),
            Conversation::new(vec![
                ChatMessage::user("no system message"),
                ChatMessage::system(system_prompt(StageRole::Arbiter)),
            ]),
        ];
        // Twice over, so that the second round hashes from the saved states of the first.
        for _ in 0..2 {
            for conversation in &conversations {
                for model in ["model-x", "model-y"] {
                    let material = serde_json::json!([
                        StageRole::Verifier.as_str(),
                        model,
                        PROMPT_VERSION,
                        conversation.messages()
                    ]);
                    let expected =
                        hex::encode(Sha256::digest(serde_json::to_vec(&material).unwrap()));
                    assert_eq!(
                        cache_key(StageRole::Verifier, model, conversation),
                        expected
                    );
                    assert_ne!(
                        cache_key(StageRole::Evaluator, model, conversation),
                        expected
                    );
                }
            }
        }
    }
}
