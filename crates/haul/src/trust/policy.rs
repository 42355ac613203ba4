//! The trust policy: the `trust` key of the config file.
//!
//! ```json
//! "trust": {
//!   "enabled": false,
//!   "dir": "/etc/haul/trust",
//!   "policy": {
//!     "registry.lan:5000/team": {"keys": ["alice", "ci"], "unsigned": "refuse"},
//!     "ghcr.io/org/tool":       {"roots": ["corp-ca"], "require": "all"},
//!     "docker.io":              {"unsigned": "warn"},
//!     "*":                      {"unsigned": "refuse"}
//!   }
//! }
//! ```
//!
//! `enabled` makes content trust the default for `pull` (as `DOCKER_CONTENT_TRUST=1` does; the
//! environment and `--disable-content-trust` override it). `dir` is the keyring (else
//! [`Keyring::default_dir`]). A rule applies to the registry or repository prefix it is keyed by
//! (whole path components: `registry.lan:5000/team` covers `registry.lan:5000/team/app`, not
//! `registry.lan:5000/teamx`); the longest matching prefix wins, `*` matches everything. `keys`
//! and `roots` name keyring entries (or PEM files, when they contain `/`); a rule naming neither
//! accepts any trusted key or root. `require: "all"` wants a valid signature from every one of
//! them, `"any"` (the default) from one. `unsigned` says what to do when no valid signature by an
//! accepted signer is found: `refuse` (the default), `warn`, or `allow`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use crate::reference::Reference;

/// What to do with an image without a valid signature by an accepted signer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unsigned {
    /// Refuse the image (the default).
    #[default]
    Refuse,
    /// Pull it, with a warning (a verdict's `warning`).
    Warn,
    /// Pull it silently.
    Allow,
}

/// Whose signatures a rule that names several signers wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Require {
    /// A valid signature by any one of them (the default).
    #[default]
    Any,
    /// A valid signature by every one of them.
    All,
}

/// One entry of the policy: whose signatures images under `scope` need.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    /// The prefix the rule was written for (`*` for the default).
    pub scope: String,
    /// Trusted keys accepted, by keyring name or PEM file path (containing `/`).
    pub keys: Vec<String>,
    /// Trusted roots accepted, by keyring name or PEM file path (containing `/`).
    pub roots: Vec<String>,
    /// Whether one or all of `keys` and `roots` must have signed.
    pub require: Require,
    /// What to do when no valid signature by an accepted signer is found.
    pub unsigned: Unsigned,
}

/// The `trust` section of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrustConfig {
    /// Content trust on by default for pulls; `None` when the file does not say.
    pub enabled: Option<bool>,
    /// The keyring directory, if the file names one.
    pub dir: Option<PathBuf>,
    /// The policy, in the order the file lists it (the longest matching scope wins, not the
    /// first).
    pub rules: Vec<Rule>,
}

impl TrustConfig {
    /// Parses the `trust` value; the error says what is wrong, for the config loader to name the
    /// key and file.
    ///
    /// # Errors
    ///
    /// A value that is not an object, an unknown key, or a key or rule with a value of the
    /// wrong shape.
    // Takes a `serde_json::Value`, which is not part of haul's API: the config file
    // (`crate::config::Config`) is the public way in. Reachable for the policy tests in
    // `tests/trust.rs`.
    #[doc(hidden)]
    pub fn parse(v: &Value) -> Result<TrustConfig, String> {
        let map = v
            .as_object()
            .ok_or_else(|| "expected an object with enabled, dir and policy".to_owned())?;
        let mut config = TrustConfig::default();
        for (key, value) in map {
            match key.as_str() {
                "enabled" => {
                    config.enabled = Some(value.as_bool().ok_or_else(|| {
                        format!("\"enabled\" must be true or false, got {value}")
                    })?);
                }
                "dir" => {
                    let dir = value
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| "\"dir\" must be a directory path".to_owned())?;
                    config.dir = Some(PathBuf::from(dir));
                }
                "policy" => {
                    let rules = value.as_object().ok_or_else(|| {
                        "\"policy\" must be an object of registry/repository prefix → rule"
                            .to_owned()
                    })?;
                    for (scope, rule) in rules {
                        config.rules.push(parse_rule(scope, rule)?);
                    }
                }
                other => return Err(format!("unknown trust key \"{other}\"")),
            }
        }
        Ok(config)
    }

    /// The rule for `reference`: the longest matching prefix, else `*`, else the default (any
    /// trusted signer, unsigned refused).
    #[must_use]
    pub fn rule_for(&self, reference: &Reference) -> Rule {
        let name = reference.name();
        self.rules
            .iter()
            .filter(|r| r.scope == "*" || covers(&r.scope, &name))
            .max_by_key(|r| if r.scope == "*" { 0 } else { r.scope.len() + 1 })
            .cloned()
            .unwrap_or_else(|| Rule {
                scope: "*".to_owned(),
                ..Rule::default()
            })
    }
}

/// Whether content trust is on, by docker's rule: an explicit choice (`--disable-content-trust`)
/// wins, then `DOCKER_CONTENT_TRUST` when set to a value, then the config file's `trust.enabled`;
/// off when none says.
#[must_use]
pub fn enabled(explicit: Option<bool>, config_default: Option<bool>) -> bool {
    explicit.unwrap_or_else(|| match std::env::var("DOCKER_CONTENT_TRUST") {
        Ok(v) if !v.is_empty() => matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"),
        _ => config_default.unwrap_or(false),
    })
}

fn covers(scope: &str, name: &str) -> bool {
    let scope = scope.trim_end_matches('/');
    name == scope || name.strip_prefix(scope).is_some_and(|r| r.starts_with('/'))
}

fn parse_rule(scope: &str, v: &Value) -> Result<Rule, String> {
    if scope.is_empty() || scope.contains("://") || scope.contains(char::is_whitespace) {
        return Err(format!(
            "policy scope {scope:?} must be a registry[/repository] prefix or \"*\""
        ));
    }
    let map = v
        .as_object()
        .ok_or_else(|| format!("policy for {scope:?} must be an object"))?;
    let names = |key: &str, v: &Value| -> Result<Vec<String>, String> {
        v.as_array()
            .and_then(|a| {
                a.iter()
                    .map(|s| s.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| format!("policy for {scope:?}: \"{key}\" must be a list of names"))
    };
    let mut rule = Rule {
        scope: scope.to_owned(),
        ..Rule::default()
    };
    let known: BTreeMap<&str, ()> = ["keys", "roots", "require", "unsigned"]
        .into_iter()
        .map(|k| (k, ()))
        .collect();
    for (key, value) in map {
        match key.as_str() {
            "keys" => rule.keys = names(key, value)?,
            "roots" => rule.roots = names(key, value)?,
            "require" => {
                rule.require = match value.as_str() {
                    Some("any") => Require::Any,
                    Some("all") => Require::All,
                    _ => {
                        return Err(format!(
                            "policy for {scope:?}: \"require\" must be \"any\" or \"all\""
                        ));
                    }
                }
            }
            "unsigned" => {
                rule.unsigned = match value.as_str() {
                    Some("refuse") => Unsigned::Refuse,
                    Some("warn") => Unsigned::Warn,
                    Some("allow") => Unsigned::Allow,
                    _ => {
                        return Err(format!(
                            "policy for {scope:?}: \"unsigned\" must be \"refuse\", \"warn\" or \"allow\""
                        ));
                    }
                }
            }
            other if !known.contains_key(other) => {
                return Err(format!("policy for {scope:?}: unknown key \"{other}\""));
            }
            _ => {}
        }
    }
    if rule.require == Require::All && rule.keys.is_empty() && rule.roots.is_empty() {
        return Err(format!(
            "policy for {scope:?}: \"require\": \"all\" needs \"keys\" or \"roots\" to list"
        ));
    }
    Ok(rule)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> TrustConfig {
        TrustConfig::parse(&json!({
            "enabled": true,
            "policy": {
                "registry.lan:5000/team": {"keys": ["alice"], "unsigned": "refuse"},
                "registry.lan:5000/team/special": {"roots": ["ca"], "require": "all"},
                "docker.io": {"unsigned": "warn"},
                "*": {"unsigned": "allow"}
            }
        }))
        .unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let c = config();
        assert_eq!(c.enabled, Some(true));
        let rule = |r: &str| c.rule_for(&r.parse().unwrap());
        assert_eq!(rule("registry.lan:5000/team/app:1").keys, vec!["alice"]);
        assert_eq!(
            rule("registry.lan:5000/team/special/x").require,
            Require::All
        );
        assert_eq!(rule("registry.lan:5000/teamx/app").scope, "*");
        assert_eq!(rule("alpine").unsigned, Unsigned::Warn);
        assert_eq!(rule("ghcr.io/a/b").unsigned, Unsigned::Allow);
        assert_eq!(
            TrustConfig::default().rule_for(&"alpine".parse().unwrap()),
            Rule {
                scope: "*".to_owned(),
                ..Rule::default()
            }
        );
    }

    #[test]
    fn refuses_bad_values() {
        for bad in [
            json!([]),
            json!({"enabled": "yes"}),
            json!({"policy": []}),
            json!({"policy": {"x": {"unsigned": "maybe"}}}),
            json!({"policy": {"x": {"keys": "alice"}}}),
            json!({"policy": {"x": {"require": "all"}}}),
            json!({"policy": {"https://x": {}}}),
            json!({"policy": {"x": {"signers": []}}}),
            json!({"other": 1}),
        ] {
            assert!(TrustConfig::parse(&bad).is_err(), "{bad}");
        }
    }
}
