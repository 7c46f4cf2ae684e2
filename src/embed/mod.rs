//! In-process sentence embeddings with all-MiniLM-L6-v2 (candle BERT, CPU only).
//!
//! Owns loading the model files that `scripts/fetch-model.sh` installs (`model.safetensors`,
//! `tokenizer.json`, `config.json` in `MODELS_DIR/all-minilm-l6-v2/`), tokenising, running the
//! encoder, and pooling. Promises: every returned vector is the attention-masked mean of the
//! last hidden layer, L2-normalised (so a dot product is the cosine similarity), identical to
//! sentence-transformers' `all-MiniLM-L6-v2` up to float error (see `testdata/README.md`);
//! inputs longer than [`MAX_TOKENS`] word pieces are truncated like sentence-transformers does.
//!
//! Threading: [`Embedder`] is `Send + Sync` (weights are immutable, shared by reference count)
//! and is CPU-bound, so call it from a blocking thread, never on an async executor. candle
//! parallelises matrix products over the *current* rayon pool (the global one, one thread per
//! core, unless called inside `rayon::ThreadPool::install`), so two callers on the global pool
//! fight for the same cores; and candle sizes matrix products from `RAYON_NUM_THREADS` (see
//! [`limit_matmul_threads`]). [`EmbedPool`] runs N workers, each inside its own small rayon
//! pool, and gives async code an `embed` that never blocks the executor.

mod bert;
mod pool;

pub use pool::{EmbedPool, Priority};

use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tokenizers::{Encoding, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// Folder name of the model inside a models directory.
pub const MODEL_DIR_NAME: &str = "all-minilm-l6-v2";
/// Word pieces per input, special tokens included (the model's trained maximum,
/// `max_seq_length` of the sentence-transformers config; the shipped tokenizer.json says 128).
pub const MAX_TOKENS: usize = 256;
/// Embedding dimension.
pub const DIM: usize = 384;
/// Inputs per forward pass. Inputs are sorted by length first, so padding stays small.
const BATCH: usize = 16;

/// Why embedding failed.
#[derive(Debug)]
pub enum EmbedError {
    /// A model file is missing or unreadable (the message names it and how to fetch it).
    Files(String),
    /// The tokenizer could not be loaded or failed on an input.
    Tokenizer(String),
    /// candle failed to load weights or run the model.
    Model(String),
    /// The [`EmbedPool`] has shut down (it was dropped).
    PoolClosed,
}

impl fmt::Display for EmbedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmbedError::Files(m) => write!(f, "embedding model files: {m}"),
            EmbedError::Tokenizer(m) => write!(f, "tokenizer: {m}"),
            EmbedError::Model(m) => write!(f, "embedding model: {m}"),
            EmbedError::PoolClosed => write!(f, "embedding pool is closed"),
        }
    }
}

impl std::error::Error for EmbedError {}

impl From<candle_core::Error> for EmbedError {
    fn from(e: candle_core::Error) -> Self {
        EmbedError::Model(e.to_string())
    }
}

/// The models directory: `$EXAMINER_MODELS_DIR` if set, else `./models`.
pub fn default_models_dir() -> PathBuf {
    std::env::var_os("EXAMINER_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("models"))
}

/// Make candle's matrix products use `threads` threads (at most), unless the operator already
/// chose with `RAYON_NUM_THREADS`. Returns the value in force.
///
/// Why: candle sizes its gemm parallelism from `RAYON_NUM_THREADS` (read on every product,
/// default = number of cores), independently of the rayon pool it runs in. Two embedding workers
/// that each ask for all cores spin against each other: measured here, two workers with the
/// default used twice the CPU time per sentence of two workers with `RAYON_NUM_THREADS=1`.
/// There is no other knob, so this sets the environment variable. Setting the environment is
/// only sound while no other thread reads it through libc, so call this early in `main`, before
/// spawning threads (the service should call it, or export `RAYON_NUM_THREADS=1`);
/// [`EmbedPool::new`] calls it as a fallback. Note that the variable also sizes rayon's global
/// pool if that is created later.
pub fn limit_matmul_threads(threads: usize) -> usize {
    match std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(n) if n > 0 => n,
        _ => {
            let n = threads.max(1);
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            n
        }
    }
}

/// Cosine similarity of two L2-normalised vectors (their dot product).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// One text's embedding plus the embeddings of byte ranges of it, pooled from the same forward
/// pass (contextual span pooling: one model run gives the whole-answer vector and every
/// sentence's vector).
#[derive(Clone, Debug)]
pub struct SpanEmbedding {
    /// Mean of all tokens of the text, normalised.
    pub whole: Vec<f32>,
    /// Per requested span: the normalised mean of the tokens inside it, or `None` when no token
    /// falls inside (empty span, or cut off by truncation at [`MAX_TOKENS`]).
    pub spans: Vec<Option<Vec<f32>>>,
    /// Every word piece (special tokens left out), in order, with its normalised contextual
    /// vector: the raw material for token-level alignment (BERTScore-style).
    pub tokens: Vec<TokenVector>,
}

/// One word piece's contextual vector and its byte range in the input text.
#[derive(Clone, Debug)]
pub struct TokenVector {
    pub start: usize,
    pub end: usize,
    pub vector: Vec<f32>,
}

/// all-MiniLM-L6-v2 on the CPU. Cheap to share: wrap in an `Arc` and use from any thread.
pub struct Embedder {
    model: bert::Encoder,
    tokenizer: Tokenizer,
    device: Device,
}

impl Embedder {
    /// Load from a folder holding `model.safetensors`, `tokenizer.json` and `config.json`
    /// (either `MODELS_DIR/all-minilm-l6-v2` itself or `MODELS_DIR`).
    pub fn load(dir: impl AsRef<Path>) -> Result<Embedder, EmbedError> {
        let mut dir = dir.as_ref().to_path_buf();
        if !dir.join("model.safetensors").exists() && dir.join(MODEL_DIR_NAME).is_dir() {
            dir = dir.join(MODEL_DIR_NAME);
        }
        for f in ["model.safetensors", "tokenizer.json", "config.json"] {
            if !dir.join(f).is_file() {
                return Err(EmbedError::Files(format!(
                    "{} is missing; run `scripts/fetch-model.sh MODELS_DIR` (default ./models or $EXAMINER_MODELS_DIR)",
                    dir.join(f).display()
                )));
            }
        }
        let config_text = std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| EmbedError::Files(format!("config.json: {e}")))?;
        let config: bert::Config = serde_json::from_str(&config_text)
            .map_err(|e| EmbedError::Files(format!("config.json: {e}")))?;
        config
            .check()
            .map_err(|e| EmbedError::Files(format!("config.json: {e}")))?;

        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        // The shipped tokenizer.json pads every input to 128 tokens and truncates at 128: pad
        // nothing (batches are padded by hand to their longest member, with an attention mask)
        // and truncate at the model's real maximum.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;

        let device = Device::Cpu;
        // SAFETY: the file is memory-mapped read-only; it must not be modified while loaded,
        // which fetch-model.sh guarantees by writing a temporary file and renaming it.
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.join("model.safetensors")],
                DType::F32,
                &device,
            )?
        };
        let model = bert::Encoder::load(vb, &config)?;
        Ok(Embedder {
            model,
            tokenizer,
            device,
        })
    }

    /// Embed texts (batched internally). One normalised 384-dim vector per text, in order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let items: Vec<(&str, &[(usize, usize)])> = texts.iter().map(|t| (*t, &[][..])).collect();
        Ok(self
            .embed_with_spans(&items)?
            .into_iter()
            .map(|s| s.whole)
            .collect())
    }

    /// Embed texts and, from the same forward pass, byte ranges `(start, end)` of each text.
    pub fn embed_with_spans(
        &self,
        items: &[(&str, &[(usize, usize)])],
    ) -> Result<Vec<SpanEmbedding>, EmbedError> {
        let encodings = items
            .iter()
            .map(|(t, _)| self.tokenizer.encode(*t, true))
            .collect::<Result<Vec<Encoding>, _>>()
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        // Sort by length so each batch pads little.
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let mut out: Vec<Option<SpanEmbedding>> = vec![None; items.len()];
        for chunk in order.chunks(BATCH) {
            let batch: Vec<&Encoding> = chunk.iter().map(|&i| &encodings[i]).collect();
            let hidden = self.forward(&batch)?;
            for (row, &i) in chunk.iter().enumerate() {
                out[i] = Some(pool_spans(&hidden[row], batch[row], items[i].1));
            }
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every input pooled"))
            .collect())
    }

    /// Run the encoder on a batch; returns per input its real (unpadded) tokens' hidden states.
    fn forward(&self, batch: &[&Encoding]) -> Result<Vec<Vec<Vec<f32>>>, EmbedError> {
        let longest = batch.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch.len() * longest);
        let mut mask = Vec::with_capacity(batch.len() * longest);
        for e in batch {
            let n = e.get_ids().len();
            ids.extend_from_slice(e.get_ids());
            ids.extend(std::iter::repeat_n(0u32, longest - n));
            mask.extend(std::iter::repeat_n(1u32, n));
            mask.extend(std::iter::repeat_n(0u32, longest - n));
        }
        let shape = (batch.len(), longest);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let hidden = self.model.forward(&ids, &mask)?;
        let mut rows = hidden.to_vec3::<f32>()?;
        for (row, e) in rows.iter_mut().zip(batch) {
            row.truncate(e.get_ids().len());
        }
        Ok(rows)
    }
}

/// Mean-pool the whole text and each requested byte span, then normalise.
fn pool_spans(hidden: &[Vec<f32>], enc: &Encoding, spans: &[(usize, usize)]) -> SpanEmbedding {
    let whole = normalised_mean(hidden.iter());
    let offsets = enc.get_offsets();
    let special = enc.get_special_tokens_mask();
    let spans = spans
        .iter()
        .map(|&(start, end)| {
            let inside = hidden
                .iter()
                .zip(offsets)
                .zip(special)
                // A token belongs to a span when it starts inside it (word pieces never straddle
                // the sentence boundaries produced by splitting on punctuation/whitespace).
                .filter(|((_, off), sp)| **sp == 0 && off.0 >= start && off.0 < end)
                .map(|((h, _), _)| h);
            let v = normalised_mean(inside);
            (!v.is_empty()).then_some(v)
        })
        .collect();
    let tokens = hidden
        .iter()
        .zip(offsets)
        .zip(special)
        .filter(|(_, sp)| **sp == 0)
        .map(|((h, off), _)| TokenVector {
            start: off.0,
            end: off.1,
            vector: normalised_mean(std::iter::once(h)),
        })
        .collect();
    SpanEmbedding {
        whole,
        spans,
        tokens,
    }
}

fn normalised_mean<'a>(rows: impl Iterator<Item = &'a Vec<f32>>) -> Vec<f32> {
    let mut sum = vec![0f32; DIM];
    let mut n = 0usize;
    for r in rows {
        for (s, x) in sum.iter_mut().zip(r) {
            *s += x;
        }
        n += 1;
    }
    if n == 0 {
        return Vec::new();
    }
    // The mean's scale cancels in the normalisation, so normalise the sum directly.
    let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    sum.iter_mut().for_each(|x| *x /= norm);
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, OnceLock};

    /// The model, loaded once per test binary. Fails (never skips) when the files are missing.
    pub(crate) fn test_embedder() -> Arc<Embedder> {
        static E: OnceLock<Arc<Embedder>> = OnceLock::new();
        E.get_or_init(|| {
            let dir = default_models_dir();
            let dir = if dir.is_relative() {
                Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)
            } else {
                dir
            };
            match Embedder::load(&dir) {
                Ok(e) => Arc::new(e),
                Err(e) => panic!(
                    "the embedding model is needed for this test and was not found in {} ({e}). \
                     Run `scripts/fetch-model.sh models` or set EXAMINER_MODELS_DIR.",
                    dir.display()
                ),
            }
        })
        .clone()
    }

    #[derive(serde::Deserialize)]
    struct Reference {
        items: Vec<RefItem>,
    }
    #[derive(serde::Deserialize)]
    struct RefItem {
        text: String,
        tokens: usize,
        embedding: Vec<f32>,
    }

    fn reference() -> Reference {
        serde_json::from_str(include_str!("testdata/reference.json")).unwrap()
    }

    #[test]
    fn matches_reference_embeddings() {
        let e = test_embedder();
        let r = reference();
        let texts: Vec<&str> = r.items.iter().map(|i| i.text.as_str()).collect();
        // Batched together (padding + mask) and one by one must both match.
        let batched = e.embed(&texts).unwrap();
        for (item, got) in r.items.iter().zip(&batched) {
            let single = &e.embed(&[item.text.as_str()]).unwrap()[0];
            assert_eq!(
                e.tokenizer
                    .encode(item.text.as_str(), true)
                    .unwrap()
                    .get_ids()
                    .len(),
                item.tokens
            );
            for (k, want) in item.embedding.iter().enumerate() {
                assert!(
                    (got[k] - want).abs() < 1e-4,
                    "batched {:?} dim {k}: {} vs {want}",
                    item.text,
                    got[k]
                );
                assert!(
                    (single[k] - want).abs() < 1e-4,
                    "single {:?} dim {k}: {} vs {want}",
                    item.text,
                    single[k]
                );
            }
        }
    }

    #[test]
    fn vectors_are_normalised_and_meaningful() {
        let e = test_embedder();
        let v = e
            .embed(&[
                "A stack is last in first out.",
                "Stacks are LIFO structures.",
                "I like green apples.",
                "",
            ])
            .unwrap();
        for x in &v {
            assert_eq!(x.len(), DIM);
            assert!((cosine(x, x) - 1.0).abs() < 1e-4);
        }
        assert!(cosine(&v[0], &v[1]) > cosine(&v[0], &v[2]) + 0.2);
    }

    #[test]
    fn span_pooling_covers_requested_ranges() {
        let e = test_embedder();
        let text = "A queue is first in first out. A stack is last in first out.";
        let cut = text.find(" A stack").unwrap();
        let r = e
            .embed_with_spans(&[(
                text,
                &[(0, cut), (cut + 1, text.len()), (text.len(), text.len())][..],
            )])
            .unwrap();
        let whole = &e.embed(&[text]).unwrap()[0];
        assert!((cosine(&r[0].whole, whole) - 1.0).abs() < 1e-4);
        let stack = &e.embed(&["A stack is last in first out."]).unwrap()[0];
        let s0 = r[0].spans[0].as_ref().unwrap();
        let s1 = r[0].spans[1].as_ref().unwrap();
        assert!(cosine(s1, stack) > cosine(s0, stack));
        assert!(r[0].spans[2].is_none());
    }

    #[test]
    fn missing_files_are_a_clear_error() {
        let err = Embedder::load("/nonexistent/models").err().unwrap();
        assert!(err.to_string().contains("fetch-model.sh"), "{err}");
    }
}
