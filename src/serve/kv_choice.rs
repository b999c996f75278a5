//! A request's KV policy and budget: a preset of the server's by name, or a policy configured in the
//! request as in RON, in JSON (`{"type": "TriAttention", "cfg": {...}}`), read by the same registry,
//! within the server's limits.

use std::sync::Arc;

use spectra_core::{Budget, KvEvictionPolicy};

use super::config::ServeConfig;
use super::error::ApiError;
use super::openai::KvRequest;

/// What a request runs under, and how the response names it.
#[derive(Clone, Debug)]
pub struct KvChoice {
    pub policy: Option<Arc<dyn KvEvictionPolicy>>,
    pub budget: Budget,
    /// The policy's name (its type, or `Full`), and the preset it came from.
    pub label: String,
    pub preset: Option<String>,
}

impl KvChoice {
    pub fn budget_tokens(&self) -> Option<usize> {
        match (&self.policy, &self.budget) {
            (Some(_), Budget::Tokens(n)) => Some(*n),
            _ => None,
        }
    }
}

/// The request's choice, or the server's default.
pub fn resolve(kv: Option<&KvRequest>, config: &ServeConfig) -> Result<KvChoice, ApiError> {
    let requested = kv.and_then(|k| k.policy.as_ref());
    let (policy, preset) = match requested {
        None | Some(serde_json::Value::Null) => match &config.default_policy {
            Some(name) => (Some(config.presets[name].clone()), Some(name.clone())),
            None => (None, None),
        },
        Some(serde_json::Value::String(name)) if name == "Full" => (None, None),
        Some(serde_json::Value::String(name)) => match config.presets.get(name) {
            Some(p) => (Some(p.clone()), Some(name.clone())),
            None => {
                return Err(ApiError::invalid(
                    "kv.policy",
                    format!(
                        "`kv.policy`: no preset `{name}` on this server (presets: {}); name one, \
                         \"Full\", or give a policy as {{\"type\": ..., \"cfg\": {{...}}}}",
                        config.preset_names()
                    ),
                ))
            }
        },
        Some(config_json) => (Some(configured(config_json, config)?), None),
    };
    let budget = kv.and_then(|k| k.budget).unwrap_or(config.default_budget);
    if budget == 0 || budget > config.max_budget {
        return Err(ApiError::invalid(
            "kv.budget",
            format!(
                "`kv.budget` is {budget}; give 1 to {} KV entries per head",
                config.max_budget
            ),
        ));
    }
    let budget = Budget::Tokens(budget);
    let label = match &policy {
        Some(p) => {
            p.validate(&budget).map_err(|m| {
                ApiError::invalid(
                    "kv.budget",
                    format!("`kv.budget` for {}: {m}", p.typetag_name()),
                )
            })?;
            p.typetag_name().to_string()
        }
        None => "Full".to_string(),
    };
    Ok(KvChoice {
        policy,
        budget,
        label,
        preset,
    })
}

/// A policy the request configures itself: of an allowed type, naming no file (files are the
/// server's to choose, in its presets). Deserializing it reads nothing; its files are refused
/// before it is validated, which would read them.
fn configured(
    json: &serde_json::Value,
    config: &ServeConfig,
) -> Result<Arc<dyn KvEvictionPolicy>, ApiError> {
    let policy: Box<dyn KvEvictionPolicy> = serde_json::from_value(json.clone()).map_err(|e| {
        ApiError::invalid(
            "kv.policy",
            format!(
                "`kv.policy`: {e}; give {{\"type\": \"StreamingLlm\", \"cfg\": {{\"sinks\": 4}}}} \
                 and the like (`spectra list policy` shows every policy and its settings)"
            ),
        )
    })?;
    if !policy.files().is_empty() {
        return Err(ApiError::invalid(
            "kv.policy",
            format!(
                "`kv.policy` names a file; a request cannot reach the server's files. Use a preset \
                 that the server configured (presets: {})",
                config.preset_names()
            ),
        ));
    }
    if let Some(allowed) = &config.allowed_policies {
        if !allowed.iter().any(|a| a == policy.typetag_name()) {
            return Err(ApiError::invalid(
                "kv.policy",
                format!(
                    "`kv.policy`: {} is not allowed on this server (allowed: {})",
                    policy.typetag_name(),
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(Arc::from(policy))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choose(policy: serde_json::Value) -> Result<KvChoice, ApiError> {
        let kv = KvRequest {
            policy: Some(policy),
            budget: Some(256),
        };
        resolve(Some(&kv), &ServeConfig::default())
    }

    /// A request cannot have the server read a file of the request's choosing, whichever setting
    /// names it, and learns nothing of whether it exists.
    #[test]
    fn a_policy_naming_a_file_is_refused_before_anything_is_read() {
        for policy in [
            serde_json::json!({"type": "TriAttention", "cfg": {"stats": {"File": "/etc/passwd"}}}),
            serde_json::json!({"type": "KvZap", "cfg": {"surrogate": "/etc/passwd"}}),
            serde_json::json!({"type": "KvZap", "cfg": {"surrogate": "/no/such/file"}}),
            serde_json::json!({"type": "AdaKv", "cfg": {"policy":
                {"type": "KvZap", "cfg": {"surrogate": "/etc/passwd"}}}}),
        ] {
            let err = choose(policy.clone()).unwrap_err();
            assert_eq!(err.param.as_deref(), Some("kv.policy"));
            assert!(
                err.message.contains("names a file"),
                "{policy}: {}",
                err.message
            );
        }
        let chosen = choose(serde_json::json!({"type": "SnapKv", "cfg": {}})).unwrap();
        assert_eq!(chosen.label, "SnapKv");
    }
}
