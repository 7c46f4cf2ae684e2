//! The BERT encoder all-MiniLM-L6-v2 needs, and no more: absolute positions, one segment,
//! BERT's erf-based GELU, no dropout, no pooler.
//!
//! candle-transformers' `BertModel` computes the same function, but its GELU calls `erff`
//! for each of the 1,536 activations per token and layer: about 15 % of an embedding's CPU
//! time. [`Gelu`] evaluates erf as one rational polynomial that the compiler vectorises,
//! within 1e-6 of `erff` (see the tests); the linear layers keep their weights transposed
//! ([`Dense`]), which saves repacking them in every product; and the attention uses candle's
//! fused softmax. GRADING.md ("Throughput") has the measurements.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::{embedding, layer_norm, Embedding, LayerNorm, VarBuilder};
use serde::Deserialize;

/// The fields of `config.json` the encoder reads.
#[derive(Debug, Deserialize)]
pub(super) struct Config {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    type_vocab_size: usize,
    layer_norm_eps: f64,
    #[serde(default = "exact_gelu")]
    hidden_act: String,
    #[serde(default = "absolute")]
    position_embedding_type: String,
}

fn exact_gelu() -> String {
    "gelu".into()
}

fn absolute() -> String {
    "absolute".into()
}

impl Config {
    /// Refuses models this encoder would compute wrongly rather than differently.
    pub(super) fn check(&self) -> std::result::Result<(), String> {
        if self.hidden_act != "gelu" {
            return Err(format!(
                "hidden_act {:?} is not supported (only \"gelu\")",
                self.hidden_act
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type {:?} is not supported (only \"absolute\")",
                self.position_embedding_type
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Ok(())
    }
}

pub(super) struct Encoder {
    word_embeddings: Embedding,
    /// Rows `0..max_position_embeddings`; a batch of length n adds the first n.
    position_embeddings: Tensor,
    /// Segment 0's row: every input is one segment.
    segment_embedding: Tensor,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    max_positions: usize,
}

struct Layer {
    /// Query, key and value side by side: one matrix product makes all three.
    query_key_value: Dense,
    heads: usize,
    head_size: usize,
    attention_out: Dense,
    attention_norm: LayerNorm,
    intermediate: Dense,
    output: Dense,
    output_norm: LayerNorm,
}

/// A linear layer with its weight kept transposed, `(inputs, outputs)` and contiguous, applied to
/// every token of a batch as one matrix product. (candle-nn's `Linear` multiplies each input
/// of the batch by a transposed view of the weight, which the matrix product repacks per
/// call.)
struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    fn load(inputs: usize, outputs: usize, vb: VarBuilder) -> Result<Self> {
        Self::side_by_side(inputs, outputs, &[vb])
    }

    /// Several layers of the same input width as one, their outputs concatenated in order.
    fn side_by_side(inputs: usize, outputs: usize, parts: &[VarBuilder]) -> Result<Self> {
        let weights = parts
            .iter()
            .map(|vb| vb.get((outputs, inputs), "weight")?.t())
            .collect::<Result<Vec<_>>>()?;
        let biases = parts
            .iter()
            .map(|vb| vb.get(outputs, "bias"))
            .collect::<Result<Vec<_>>>()?;
        Ok(Dense {
            weight: Tensor::cat(&weights, 1)?.contiguous()?,
            bias: Tensor::cat(&biases, 0)?,
        })
    }

    /// `(batch, length, inputs)` → `(batch, length, outputs)`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (batch, length, inputs) = xs.dims3()?;
        let outputs = self.weight.dim(1)?;
        xs.reshape((batch * length, inputs))?
            .matmul(&self.weight)?
            .broadcast_add(&self.bias)?
            .reshape((batch, length, outputs))
    }
}

impl Encoder {
    /// Loads weights named as in the sentence-transformers checkpoint (`embeddings.*`,
    /// `encoder.layer.N.*`), with or without a `bert.` prefix.
    pub(super) fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let emb = vb.pp("embeddings");
        let hidden = config.hidden_size;
        let word_embeddings = embedding(config.vocab_size, hidden, emb.pp("word_embeddings"))?;
        let position_embeddings = emb
            .pp("position_embeddings")
            .get((config.max_position_embeddings, hidden), "weight")?;
        let segment_embedding = emb
            .pp("token_type_embeddings")
            .get((config.type_vocab_size, hidden), "weight")?
            .get(0)?;
        let embeddings_norm = layer_norm(hidden, config.layer_norm_eps, emb.pp("LayerNorm"))?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::load(vb.pp(format!("encoder.layer.{i}")), config))
            .collect::<Result<Vec<_>>>()?;
        Ok(Encoder {
            word_embeddings,
            position_embeddings,
            segment_embedding,
            embeddings_norm,
            layers,
            max_positions: config.max_position_embeddings,
        })
    }

    /// `ids` and `mask` are `(batch, length)` u32 (mask 1 for real tokens, 0 for padding);
    /// returns the last layer's hidden states, `(batch, length, hidden)`.
    pub(super) fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (_, length) = ids.dims2()?;
        if length > self.max_positions {
            candle_core::bail!(
                "{length} tokens exceed the model's {} positions",
                self.max_positions
            );
        }
        let positions = self.position_embeddings.narrow(0, 0, length)?;
        let embedded = self
            .word_embeddings
            .forward(ids)?
            .broadcast_add(&positions)?
            .broadcast_add(&self.segment_embedding)?;
        let mut hidden = self.embeddings_norm.forward(&embedded)?;
        // 0 where attention may look, a large negative number on padding: (batch, 1, 1, length).
        let masked = ((1.0 - mask.to_dtype(DType::F32)?)? * f64::from(f32::MIN))?
            .unsqueeze(1)?
            .unsqueeze(1)?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &masked)?;
        }
        Ok(hidden)
    }
}

impl Layer {
    fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        let hidden = config.hidden_size;
        let eps = config.layer_norm_eps;
        let attention = vb.pp("attention");
        let own = attention.pp("self");
        Ok(Layer {
            query_key_value: Dense::side_by_side(
                hidden,
                hidden,
                &[own.pp("query"), own.pp("key"), own.pp("value")],
            )?,
            heads: config.num_attention_heads,
            head_size: hidden / config.num_attention_heads,
            attention_out: Dense::load(hidden, hidden, attention.pp("output").pp("dense"))?,
            attention_norm: layer_norm(hidden, eps, attention.pp("output").pp("LayerNorm"))?,
            intermediate: Dense::load(
                hidden,
                config.intermediate_size,
                vb.pp("intermediate").pp("dense"),
            )?,
            output: Dense::load(
                config.intermediate_size,
                hidden,
                vb.pp("output").pp("dense"),
            )?,
            output_norm: layer_norm(hidden, eps, vb.pp("output").pp("LayerNorm"))?,
        })
    }

    fn forward(&self, hidden: &Tensor, masked: &Tensor) -> Result<Tensor> {
        let (batch, length, width) = hidden.dims3()?;
        // (batch, length, 3 · width) → (3, batch, heads, length, head_size), in one copy.
        let query_key_value = self
            .query_key_value
            .forward(hidden)?
            .reshape((batch, length, 3, self.heads, self.head_size))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let query = query_key_value.get(0)?;
        let key = query_key_value.get(1)?;
        let value = query_key_value.get(2)?;
        let scores =
            (query.matmul(&key.t()?)? / (self.head_size as f64).sqrt())?.broadcast_add(masked)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = weights
            .matmul(&value)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((batch, length, width))?;
        let attended = self
            .attention_norm
            .forward(&(self.attention_out.forward(&context)? + hidden)?)?;
        let expanded = self
            .intermediate
            .forward(&attended)?
            .apply_op1_no_bwd(&Gelu)?;
        self.output_norm
            .forward(&(self.output.forward(&expanded)? + &attended)?)
    }
}

/// GELU as BERT defines it, `x · (1 + erf(x / √2)) / 2`, with erf from [`erf`].
struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-erf-rational"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(values) = storage else {
            candle_core::bail!("gelu: expected f32 activations");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("gelu: expected contiguous activations");
        };
        let out = values[start..end].iter().map(|&x| gelu(x)).collect();
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf for f32 as one rational function of x (odd numerator of degree 13 over even
/// denominator of degree 8) on [-4, 4], where erf reaches ±1 in f32. No branches and no
/// exponential, so a loop over a slice vectorises. The coefficients are the ones XLA and
/// Eigen use for float erf.
fn erf(x: f32) -> f32 {
    // Plain multiply-adds, not `mul_add`: without FMA in the target that is a library call
    // per operation.
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_6e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329e-3;
    q = q * x2 - 1.426_474e-2;
    x * p / q
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn erf_stays_within_a_millionth_of_libm() {
        let mut worst = (0.0_f32, 0.0_f32);
        for i in -1_000_000..=1_000_000 {
            let x = i as f32 * 6e-6;
            let error = (erf(x) - libm::erff(x)).abs();
            if error > worst.1 {
                worst = (x, error);
            }
        }
        assert!(worst.1 < 1e-6, "erf({}) is off by {}", worst.0, worst.1);
        for x in [-1e30_f32, -9.0, 9.0, 1e30, f32::MAX, f32::MIN] {
            assert!((erf(x) - x.signum()).abs() < 1e-6, "erf({x}) = {}", erf(x));
        }
        assert_eq!(erf(0.0), 0.0);
    }

    #[test]
    fn models_this_encoder_would_compute_wrongly_are_refused() {
        let config = |field: &str, value: serde_json::Value| -> Config {
            let mut fields = json!({
                "vocab_size": 10, "hidden_size": 384, "num_hidden_layers": 1,
                "num_attention_heads": 12, "intermediate_size": 8,
                "max_position_embeddings": 16, "type_vocab_size": 2, "layer_norm_eps": 1e-12
            });
            if !field.is_empty() {
                fields[field] = value;
            }
            serde_json::from_value(fields).unwrap()
        };
        assert_eq!(
            config("", json!(null)).check(),
            Ok(()),
            "gelu is the default"
        );
        assert_eq!(config("hidden_act", json!("gelu")).check(), Ok(()));
        let refused = config("hidden_act", json!("gelu_new")).check().unwrap_err();
        assert!(refused.contains("gelu_new"), "{refused}");
        let refused = config("position_embedding_type", json!("relative_key"))
            .check()
            .unwrap_err();
        assert!(refused.contains("relative_key"), "{refused}");
        let refused = config("num_attention_heads", json!(5)).check().unwrap_err();
        assert!(refused.contains("not a multiple"), "{refused}");
    }

    #[test]
    fn gelu_matches_its_definition() {
        for i in -2_000..=2_000 {
            let x = i as f32 / 200.0;
            let exact = 0.5 * f64::from(x) * (1.0 + libm::erf(f64::from(x) / 2f64.sqrt()));
            assert!(
                (f64::from(gelu(x)) - exact).abs() < 2e-6,
                "gelu({x}) = {} against {exact}",
                gelu(x)
            );
        }
    }
}
