//! Scenario description for the fake provider.
//!
//! A [`Scenario`] says how each fake model behaves: how "able" it is, how slow
//! it is, what its bad answers look like, and which faults it injects (a
//! scripted `sequence` for the first requests, then a seeded random
//! `fail_rate`, with `fail_with` or a `fail_mix` of faults). Scenarios are written in TOML (files, `ladder fake-provider
//! --scenario`) or JSON (the `PUT /_fake/scenario` control endpoint); both
//! formats share the same serde model.
//!
//! Per-model settings are optional: anything a `[models."x"]` table leaves out
//! is taken from `[defaults]`, and anything `[defaults]` leaves out from the
//! built-in defaults (ability 1.0, no latency, 24-token answers, refusals as
//! bad answers, no faults). Unknown keys are rejected so that typos in test
//! scenarios fail loudly instead of silently doing nothing.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// The full description of how the fake provider behaves.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// When set, requests must authenticate with this key
    /// (`Authorization: Bearer` for OpenAI, `x-api-key` for Anthropic, `x-goog-api-key` or
    /// `?key=` for Gemini).
    pub api_key: Option<String>,
    /// When true, a request with the wrong key gets a 401 whose message repeats the key it
    /// presented in full (a worst-case upstream, for testing that Ladder never passes it on).
    pub echo_api_key: bool,
    /// Seed of the per-model RNGs used for probabilistic faults (`fail_rate`).
    pub seed: u64,
    /// When true (the default), request parameters that the real API does not
    /// know are rejected with a 400, like the real APIs do.
    pub strict: Option<bool>,
    /// Settings for models that are not listed in `models`, and the fallback
    /// for settings a listed model leaves out.
    pub defaults: ModelSpec,
    /// Per-model settings, keyed by the model name used in requests.
    pub models: BTreeMap<String, ModelSpec>,
}

/// How one model behaves. Every field is optional; see the module docs for
/// how missing fields are filled in.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSpec {
    /// 0..=1: the model answers well iff `ability >= difficulty(prompt)`.
    pub ability: Option<f64>,
    /// Delay before the response (before the first byte when streaming).
    pub latency_ms: Option<u64>,
    /// Delay between stream chunks.
    pub chunk_delay_ms: Option<u64>,
    /// Length of a normal answer, in words (= completion tokens).
    pub output_tokens: Option<usize>,
    /// What a bad answer looks like.
    pub bad_answer: Option<BadAnswer>,
    /// Probability of answering with `fail_with` (after `sequence` is used up).
    pub fail_rate: Option<f64>,
    /// The behaviour used when the `fail_rate` dice says "fail".
    pub fail_with: Option<Behavior>,
    /// When set (non-empty), a request the `fail_rate` dice fails gets one of these, picked
    /// uniformly by the same seeded RNG, instead of `fail_with`: a mix of faults at a known rate.
    pub fail_mix: Option<Vec<Behavior>>,
    /// Behaviours for the first N requests to this model, in order.
    pub sequence: Option<Vec<Behavior>>,
    /// Case-insensitive substrings: prompts containing any are answered badly.
    pub fails_on: Option<Vec<String>>,
}

/// The shape of a bad (low-quality) answer.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BadAnswer {
    /// "I'm sorry, but I can't help with that."
    #[default]
    Refusal,
    /// An empty content string.
    Empty,
    /// A plausible answer carrying the [`super::WRONG_MARKER`] marker.
    Wrong,
    /// A cut-off answer with `finish_reason: "length"` / `stop_reason: "max_tokens"`.
    Truncated,
}

/// What the fake does with one request. Tagged by `kind`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Behavior {
    /// Answer normally (good or bad according to ability / `fails_on`).
    Ok,
    /// Answer badly regardless of ability (`style` defaults to the model's
    /// `bad_answer`).
    Bad {
        #[serde(default)]
        style: Option<BadAnswer>,
    },
    /// An HTTP error in the API's own error shape.
    Status {
        status: u16,
        /// Sets the `retry-after` header (seconds).
        #[serde(default)]
        retry_after_s: Option<u64>,
        /// Sets the `retry-after-ms` header (and `retry-after`, rounded up).
        #[serde(default)]
        retry_after_ms: Option<u64>,
        /// Overrides the error message.
        #[serde(default)]
        message: Option<String>,
    },
    /// Never respond (until the client gives up or the server shuts down).
    Hang,
    /// Wait `delay_ms` before sending the response headers, then answer normally.
    SlowFirstByte { delay_ms: u64 },
    /// Streaming: send `after_chunks` content chunks, then abort the body
    /// (no `[DONE]` / `message_stop`). Non-streaming: send part of the body,
    /// then abort.
    DropStream {
        #[serde(default)]
        after_chunks: usize,
    },
    /// 200 with `content-type: application/json` and an invalid JSON body.
    MalformedJson,
    /// 200 with `content-type: text/html` and an HTML body.
    WrongContentType,
    /// 200 with a valid response padded to (at least) `bytes` bytes.
    Oversized { bytes: usize },
    /// Close the TCP connection (RST) without sending any response.
    Reset,
}

/// A model's settings with every default filled in.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ModelConfig {
    pub ability: f64,
    pub latency_ms: u64,
    pub chunk_delay_ms: u64,
    pub output_tokens: usize,
    pub bad_answer: BadAnswer,
    pub fail_rate: f64,
    pub fail_with: Behavior,
    pub fail_mix: Vec<Behavior>,
    pub sequence: Vec<Behavior>,
    pub fails_on: Vec<String>,
}

impl Scenario {
    /// Parses a scenario from TOML text.
    pub fn from_toml_str(s: &str) -> anyhow::Result<Scenario> {
        let scenario: Scenario = toml::from_str(s).context("invalid fake-provider scenario")?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Parses a scenario from JSON text (the control-plane format).
    pub fn from_json_str(s: &str) -> anyhow::Result<Scenario> {
        let scenario: Scenario = serde_json::from_str(s).context("invalid fake-provider scenario")?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Loads a scenario file: JSON if the extension is `.json`, TOML otherwise.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading scenario {}", path.display()))?;
        let parsed = if path.extension().is_some_and(|e| e == "json") {
            Self::from_json_str(&text)
        } else {
            Self::from_toml_str(&text)
        };
        parsed.with_context(|| format!("in scenario {}", path.display()))
    }

    /// Checks value ranges that serde cannot express.
    pub fn validate(&self) -> anyhow::Result<()> {
        let specs = std::iter::once(("[defaults]", &self.defaults)).chain(self.models.iter().map(|(k, v)| (k.as_str(), v)));
        for (name, spec) in specs {
            if let Some(a) = spec.ability {
                anyhow::ensure!((0.0..=1.0).contains(&a), "model {name}: ability must be within 0..=1, got {a}");
            }
            if let Some(r) = spec.fail_rate {
                anyhow::ensure!((0.0..=1.0).contains(&r), "model {name}: fail_rate must be within 0..=1, got {r}");
            }
            let behaviours = spec
                .sequence
                .iter()
                .flatten()
                .chain(spec.fail_with.iter())
                .chain(spec.fail_mix.iter().flatten());
            for b in behaviours {
                if let Behavior::Status { status, .. } = b {
                    anyhow::ensure!(
                        (100..=999).contains(status) && *status != 101,
                        "model {name}: invalid status {status}"
                    );
                }
            }
        }
        Ok(())
    }

    /// Whether unknown request parameters are rejected.
    pub(crate) fn is_strict(&self) -> bool {
        self.strict.unwrap_or(true)
    }

    /// The effective configuration of `model`.
    pub(crate) fn config_for(&self, model: &str) -> ModelConfig {
        let d = &self.defaults;
        let m = self.models.get(model);
        macro_rules! pick {
            ($field:ident, $builtin:expr) => {
                m.and_then(|m| m.$field.clone())
                    .or_else(|| d.$field.clone())
                    .unwrap_or_else(|| $builtin)
            };
        }
        ModelConfig {
            ability: pick!(ability, 1.0),
            latency_ms: pick!(latency_ms, 0),
            chunk_delay_ms: pick!(chunk_delay_ms, 0),
            output_tokens: pick!(output_tokens, 24),
            bad_answer: pick!(bad_answer, BadAnswer::Refusal),
            fail_rate: pick!(fail_rate, 0.0),
            fail_with: pick!(
                fail_with,
                Behavior::Status {
                    status: 503,
                    retry_after_s: None,
                    retry_after_ms: None,
                    message: None,
                }
            ),
            fail_mix: pick!(fail_mix, Vec::new()),
            sequence: pick!(sequence, Vec::new()),
            fails_on: pick!(fails_on, Vec::new()),
        }
    }

    /// The model names the scenario lists, sorted.
    pub(crate) fn model_names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_toml_example() {
        let s = Scenario::from_toml_str(
            r#"
            api_key = "k"
            seed = 42
            [defaults]
            ability = 0.9
            output_tokens = 10
            [models."cheap-1"]
            ability = 0.4
            latency_ms = 5
            chunk_delay_ms = 1
            bad_answer = "truncated"
            fail_rate = 0.1
            fail_with = { kind = "status", status = 503 }
            sequence = [ { kind = "status", status = 429, retry_after_s = 1 }, { kind = "ok" },
                         { kind = "hang" }, { kind = "drop_stream", after_chunks = 2 },
                         { kind = "oversized", bytes = 100000 }, { kind = "reset" },
                         { kind = "slow_first_byte", delay_ms = 10 }, { kind = "malformed_json" },
                         { kind = "wrong_content_type" }, { kind = "bad" } ]
            fails_on = ["regex"]
            "#,
        )
        .expect("valid scenario");
        assert_eq!(s.api_key.as_deref(), Some("k"));
        let c = s.config_for("cheap-1");
        assert_eq!(c.ability, 0.4);
        assert_eq!(c.output_tokens, 10, "inherited from [defaults]");
        assert_eq!(c.bad_answer, BadAnswer::Truncated);
        assert_eq!(c.sequence.len(), 10);
        assert_eq!(
            c.sequence[0],
            Behavior::Status {
                status: 429,
                retry_after_s: Some(1),
                retry_after_ms: None,
                message: None
            }
        );
        let unknown = s.config_for("other");
        assert_eq!(unknown.ability, 0.9);
        assert!(unknown.sequence.is_empty());
        assert_eq!(Scenario::default().config_for("x").ability, 1.0);
    }

    #[test]
    fn rejects_typos_and_bad_ranges() {
        assert!(Scenario::from_toml_str("[models.a]\nabilty = 0.3").is_err());
        assert!(Scenario::from_toml_str("[models.a]\nability = 1.3").is_err());
        assert!(Scenario::from_toml_str("[models.a]\nsequence = [{kind = \"status\", stauts = 1}]").is_err());
        assert!(Scenario::from_toml_str("[models.a]\nsequence = [{kind = \"nope\"}]").is_err());
        assert!(Scenario::from_toml_str("[models.a]\nfail_mix = [{kind = \"status\", status = 42}]").is_err());
    }

    #[test]
    fn json_round_trip() {
        let s = Scenario::from_toml_str("[models.a]\nsequence = [{kind = \"status\", status = 429, retry_after_s = 2}]").expect("valid");
        let json = serde_json::to_string(&s).expect("serializable");
        assert_eq!(Scenario::from_json_str(&json).expect("valid json"), s);
    }
}
