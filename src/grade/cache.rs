//! Memoisation of validated stage replies under a content address, so an identical answer to
//! the same question (same standard answer, marks, model and prompt version) costs no LLM call.
//! Owns the key derivation ([`cache_key`]) and two [`ReplyCache`] implementations: an in-memory
//! one with a size bound, and [`NoCache`]. Only validated replies are ever stored; failures
//! never are (the caller guarantees it).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::client::ChatMessage;
use super::prompts::PROMPT_VERSION;
use super::{ReplyCache, StageRole};

/// Hex SHA-256 over (role, model, [`PROMPT_VERSION`], the full rendered messages). The parts
/// are serialised as one JSON array, so no two different inputs share an encoding.
pub(crate) fn cache_key(role: StageRole, model: &str, messages: &[ChatMessage]) -> String {
    let material = serde_json::json!([role.as_str(), model, PROMPT_VERSION, messages]);
    let bytes = serde_json::to_vec(&material).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
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
