//! `spectra serve --config serve.ron`: how much the server admits, and which KV policies requests
//! may ask for.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use spectra_core::config::{Invalid, Validate};
use spectra_core::{registry, Budget, KvEvictionPolicy};

/// The server's settings; every field has a default.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Bytes of KV cache all running requests may hold together; unlimited when `None`. A request
    /// waits until its peak fits.
    pub kv_memory: Option<usize>,
    /// The most requests decoding at once.
    pub max_sequences: usize,
    /// The most requests waiting for room; more are answered 429.
    pub max_queue: usize,
    /// The most tokens one forward pass carries, and the most prompt tokens of one request in it.
    pub step_tokens: usize,
    pub chunk: usize,
    /// Named policies a request may choose by name (`"kv": {"policy": "tri"}`), configured here in
    /// full, files included.
    pub presets: BTreeMap<String, Arc<dyn KvEvictionPolicy>>,
    /// The preset applied to a request that asks for none; the full cache when `None`.
    pub default_policy: Option<String>,
    /// The budget (KV entries per head) of a request that gives none.
    pub default_budget: usize,
    /// The largest budget a request may ask for.
    pub max_budget: usize,
    /// Policy types a request may configure itself (`"kv": {"policy": {"type": ...}}`); every
    /// registered one when `None`. Configurations that name files are only taken from presets.
    pub allowed_policies: Option<Vec<String>>,
    /// `max_tokens` of a request that gives none; the rest of the model's context when `None`.
    pub default_max_tokens: Option<usize>,
    /// The largest request body, bytes.
    pub max_body_bytes: usize,
    /// After SIGTERM or SIGINT, how long requests already running may take to finish before they are
    /// cancelled.
    pub shutdown_grace_seconds: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            kv_memory: None,
            max_sequences: 16,
            max_queue: 64,
            step_tokens: 512,
            chunk: 256,
            presets: BTreeMap::new(),
            default_policy: None,
            default_budget: 1024,
            max_budget: 1 << 20,
            allowed_policies: None,
            default_max_tokens: None,
            max_body_bytes: 4 << 20,
            shutdown_grace_seconds: 10,
        }
    }
}

impl Validate for ServeConfig {
    fn validate(&self) -> Result<(), Invalid> {
        for (field, value) in [
            ("max_sequences", self.max_sequences),
            ("step_tokens", self.step_tokens),
            ("chunk", self.chunk),
            ("default_budget", self.default_budget),
            ("max_budget", self.max_budget),
            ("max_body_bytes", self.max_body_bytes),
        ] {
            if value == 0 {
                return Err(Invalid::new(format!("{field} is 0"))
                    .near(field)
                    .help("give at least 1"));
            }
        }
        if self.kv_memory == Some(0) {
            return Err(Invalid::new("kv_memory is 0")
                .near("kv_memory")
                .help("give a byte count, or leave it out for no limit"));
        }
        if self.default_budget > self.max_budget {
            return Err(Invalid::new(format!(
                "default_budget {} is above max_budget {}",
                self.default_budget, self.max_budget
            ))
            .near("default_budget"));
        }
        if let Some(name) = &self.default_policy {
            if !self.presets.contains_key(name) {
                return Err(
                    Invalid::new(format!("default_policy `{name}` is not a preset"))
                        .near("default_policy")
                        .help(format!("presets: {}", self.preset_names())),
                );
            }
        }
        for (name, policy) in &self.presets {
            policy
                .validate(&Budget::Tokens(self.default_budget))
                .map_err(|m| Invalid::new(format!("preset `{name}`: {m}")).near(name.as_str()))?;
        }
        if let Some(allowed) = &self.allowed_policies {
            let known = registry::names(registry::Family::KvEvictionPolicy);
            if let Some(bad) = allowed.iter().find(|a| !known.contains(&a.as_str())) {
                return Err(Invalid::new(format!("allowed_policies: no policy `{bad}`"))
                    .near(bad.as_str())
                    .help(format!("registered policies: {}", known.join(", "))));
            }
        }
        Ok(())
    }
}

impl ServeConfig {
    pub fn preset_names(&self) -> String {
        if self.presets.is_empty() {
            "none".into()
        } else {
            self.presets.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    }
}
