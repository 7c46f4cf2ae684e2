//! The structured replies of the three stages: their JSON schemas (sent as `json_schema`
//! response formats), lenient extraction of a JSON object from whatever text a model returned
//! (fences, chatter, `<think>` blocks), and strict validation into typed structs. Validation
//! errors are phrased for the model, because they are sent back to it in the one re-ask.

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// A stage's validated reply.
pub(crate) trait StageReply: Sized + Serialize {
    /// The `json_schema.name` sent to the server.
    const SCHEMA_NAME: &'static str;
    fn schema() -> &'static Value;
    fn validate(value: &Value) -> Result<Self, String>;
    /// The marks as the model gave them (finite, not yet clamped).
    fn marks(&self) -> f64;
    fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// `{marks, feedback, reasoning, key_points_covered, key_points_missed}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub(crate) struct EvaluatorReply {
    pub marks: f64,
    pub feedback: String,
    pub reasoning: String,
    pub key_points_covered: Vec<String>,
    pub key_points_missed: Vec<String>,
}

/// `{agrees, marks, reasons}`: the verifier's view of the evaluator's result.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub(crate) struct VerifierReply {
    pub agrees: bool,
    pub marks: f64,
    pub reasons: String,
}

/// `{marks, feedback, reasoning}`: the final decision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub(crate) struct ArbiterReply {
    pub marks: f64,
    pub feedback: String,
    pub reasoning: String,
}

fn object_schema(properties: Value, required: &[&str]) -> Value {
    // `strict: true` on OpenAI requires every property listed as required and no extras.
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false
    })
}

// The schemas are built once: every call of a stage sends its schema.
static EVALUATOR_SCHEMA: LazyLock<Value> = LazyLock::new(|| {
    object_schema(
        json!({
            "marks": {"type": "number"},
            "feedback": {"type": "string"},
            "reasoning": {"type": "string"},
            "key_points_covered": {"type": "array", "items": {"type": "string"}},
            "key_points_missed": {"type": "array", "items": {"type": "string"}}
        }),
        &[
            "marks",
            "feedback",
            "reasoning",
            "key_points_covered",
            "key_points_missed",
        ],
    )
});
static VERIFIER_SCHEMA: LazyLock<Value> = LazyLock::new(|| {
    object_schema(
        json!({
            "agrees": {"type": "boolean"},
            "marks": {"type": "number"},
            "reasons": {"type": "string"}
        }),
        &["agrees", "marks", "reasons"],
    )
});
static ARBITER_SCHEMA: LazyLock<Value> = LazyLock::new(|| {
    object_schema(
        json!({
            "marks": {"type": "number"},
            "feedback": {"type": "string"},
            "reasoning": {"type": "string"}
        }),
        &["marks", "feedback", "reasoning"],
    )
});

impl StageReply for EvaluatorReply {
    const SCHEMA_NAME: &'static str = "evaluator_grade";
    fn schema() -> &'static Value {
        &EVALUATOR_SCHEMA
    }
    fn validate(value: &Value) -> Result<Self, String> {
        let obj = as_object(value)?;
        Ok(EvaluatorReply {
            marks: number(obj, "marks")?,
            feedback: non_empty_string(obj, "feedback")?,
            reasoning: string(obj, "reasoning")?,
            key_points_covered: string_array(obj, "key_points_covered")?,
            key_points_missed: string_array(obj, "key_points_missed")?,
        })
    }
    fn marks(&self) -> f64 {
        self.marks
    }
}

impl StageReply for VerifierReply {
    const SCHEMA_NAME: &'static str = "verifier_check";
    fn schema() -> &'static Value {
        &VERIFIER_SCHEMA
    }
    fn validate(value: &Value) -> Result<Self, String> {
        let obj = as_object(value)?;
        Ok(VerifierReply {
            agrees: boolean(obj, "agrees")?,
            marks: number(obj, "marks")?,
            reasons: string(obj, "reasons")?,
        })
    }
    fn marks(&self) -> f64 {
        self.marks
    }
}

impl StageReply for ArbiterReply {
    const SCHEMA_NAME: &'static str = "arbiter_decision";
    fn schema() -> &'static Value {
        &ARBITER_SCHEMA
    }
    fn validate(value: &Value) -> Result<Self, String> {
        let obj = as_object(value)?;
        Ok(ArbiterReply {
            marks: number(obj, "marks")?,
            feedback: non_empty_string(obj, "feedback")?,
            reasoning: string(obj, "reasoning")?,
        })
    }
    fn marks(&self) -> f64 {
        self.marks
    }
}

fn as_object(value: &Value) -> Result<&Map<String, Value>, String> {
    value
        .as_object()
        .ok_or_else(|| format!("the reply must be a JSON object, got {}", kind(value)))
}

fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a Value, String> {
    match obj.get(name) {
        None | Some(Value::Null) => Err(format!("required field `{name}` is missing")),
        Some(v) => Ok(v),
    }
}

fn number(obj: &Map<String, Value>, name: &str) -> Result<f64, String> {
    let v = field(obj, name)?;
    match v.as_f64() {
        Some(n) if n.is_finite() => Ok(n),
        Some(_) => Err(format!("field `{name}` must be a finite number")),
        None => Err(format!("field `{name}` must be a number, got {}", kind(v))),
    }
}

fn boolean(obj: &Map<String, Value>, name: &str) -> Result<bool, String> {
    let v = field(obj, name)?;
    v.as_bool()
        .ok_or_else(|| format!("field `{name}` must be true or false, got {}", kind(v)))
}

fn string(obj: &Map<String, Value>, name: &str) -> Result<String, String> {
    let v = field(obj, name)?;
    v.as_str()
        .map(|s| s.trim().to_string())
        .ok_or_else(|| format!("field `{name}` must be a string, got {}", kind(v)))
}

fn non_empty_string(obj: &Map<String, Value>, name: &str) -> Result<String, String> {
    let s = string(obj, name)?;
    if s.is_empty() {
        return Err(format!("field `{name}` must not be empty"));
    }
    Ok(s)
}

fn string_array(obj: &Map<String, Value>, name: &str) -> Result<Vec<String>, String> {
    let v = field(obj, name)?;
    let items = v.as_array().ok_or_else(|| {
        format!(
            "field `{name}` must be an array of strings, got {}",
            kind(v)
        )
    })?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let s = item.as_str().ok_or_else(|| {
            format!(
                "field `{name}` item {i} must be a string, got {}",
                kind(item)
            )
        })?;
        let s = s.trim();
        if !s.is_empty() {
            out.push(s.to_string());
        }
    }
    Ok(out)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Candidate starts tried when scanning free text; bounds the work on adversarial replies.
const MAX_SCAN_STARTS: usize = 64;

/// Finds the JSON object in a model's reply: the whole text, else the first fenced block that
/// parses, else the first balanced `{...}` that parses. Reasoning models' `<think>` blocks are
/// skipped first because they often contain draft JSON.
pub(crate) fn extract_json(text: &str) -> Result<Value, String> {
    let text = match text.rfind("</think>") {
        Some(i) => &text[i + "</think>".len()..],
        None => text,
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("the reply was empty".into());
    }
    if let Ok(v) = serde_json::from_str::<Value>(trimmed) {
        return if v.is_object() {
            Ok(v)
        } else {
            Err(format!("the reply must be a JSON object, got {}", kind(&v)))
        };
    }
    // ```json ... ``` fences (the language tag is optional).
    let mut rest = trimmed;
    while let Some(open) = rest.find("```") {
        let after = &rest[open + 3..];
        let body_start = after.find('\n').map(|i| i + 1).unwrap_or(0);
        let body = &after[body_start..];
        let Some(close) = body.find("```") else { break };
        if let Ok(v) = serde_json::from_str::<Value>(body[..close].trim()) {
            if v.is_object() {
                return Ok(v);
            }
        }
        rest = &body[close + 3..];
    }
    for (tried, (start, _)) in trimmed.match_indices('{').enumerate() {
        if tried >= MAX_SCAN_STARTS {
            break;
        }
        if let Some(end) = balanced_end(&trimmed[start..]) {
            if let Ok(v) = serde_json::from_str::<Value>(&trimmed[start..start + end]) {
                if v.is_object() {
                    return Ok(v);
                }
            }
        }
    }
    Err("the reply does not contain a valid JSON object".into())
}

/// Byte length of the balanced `{...}` at the start of `s` (string- and escape-aware).
fn balanced_end(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' => depth += 1,
            '}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}
