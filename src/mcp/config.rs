//! The `[mcp]` table of the server configuration, in two layers like the rest of it:
//! [`RawMcpConfig`] (serde, no logic) and [`McpConfig`] (validated, immutable).
//!
//! ```toml
//! [mcp]
//! enabled = true                       # mount the streamable HTTP transport at /mcp
//! # Host header values /mcp answers (DNS-rebinding protection). Entries are `name` (any
//! # port) or `name:port`; ["*"] turns the check off (only behind a proxy that checks Host).
//! allowed_hosts = ["localhost", "127.0.0.1", "::1"]
//! # Browser origins /mcp answers. A request without an Origin header (every non-browser
//! # client) passes; one with any other Origin is refused with 403. `:*` is any port.
//! allowed_origins = ["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*"]
//! ```
//!
//! Stdio (`kakoi mcp`) has no Host or Origin: only the process that started kakoi talks to it.

use serde::Deserialize;

/// `[mcp]` as written: every field optional, no logic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcpConfig {
    /// Mount `/mcp` on `kakoi serve` (default true).
    pub enabled: Option<bool>,
    /// Accepted `Host` header values.
    pub allowed_hosts: Option<Vec<String>>,
    /// Accepted `Origin` header values.
    pub allowed_origins: Option<Vec<String>>,
}

/// The validated `[mcp]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpConfig {
    /// Mount `/mcp` on `kakoi serve`.
    pub enabled: bool,
    /// Accepted `Host` values; empty means any (configured as `["*"]`).
    pub allowed_hosts: Vec<String>,
    /// Accepted `Origin` values; requests without an Origin always pass, an empty list
    /// refuses every Origin.
    pub allowed_origins: Vec<String>,
}

/// The loopback names a local client uses (any port).
pub const DEFAULT_ALLOWED_HOSTS: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// Browser pages served from loopback (any port, http or https).
pub const DEFAULT_ALLOWED_ORIGINS: &[&str] = &[
    "http://localhost:*",
    "http://127.0.0.1:*",
    "http://[::1]:*",
    "https://localhost:*",
    "https://127.0.0.1:*",
    "https://[::1]:*",
];

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            enabled: true,
            allowed_hosts: DEFAULT_ALLOWED_HOSTS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            allowed_origins: DEFAULT_ALLOWED_ORIGINS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// A value of `[mcp]` that cannot be used: the key and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration value for mcp.{key}: {reason}")]
pub struct McpConfigError {
    /// `allowed_hosts` or `allowed_origins`.
    pub key: &'static str,
    /// Why.
    pub reason: String,
}

impl RawMcpConfig {
    /// `self` with every field `over` sets replaced.
    pub fn overlay(mut self, over: RawMcpConfig) -> RawMcpConfig {
        if over.enabled.is_some() {
            self.enabled = over.enabled;
        }
        if over.allowed_hosts.is_some() {
            self.allowed_hosts = over.allowed_hosts;
        }
        if over.allowed_origins.is_some() {
            self.allowed_origins = over.allowed_origins;
        }
        self
    }

    /// Check every entry and produce the configuration `/mcp` runs with.
    pub fn validate(self) -> Result<McpConfig, McpConfigError> {
        let defaults = McpConfig::default();
        let allowed_hosts = match self.allowed_hosts {
            None => defaults.allowed_hosts,
            Some(hosts) => validate_hosts(hosts)?,
        };
        let allowed_origins = match self.allowed_origins {
            None => defaults.allowed_origins,
            Some(origins) => validate_origins(origins)?,
        };
        Ok(McpConfig {
            enabled: self.enabled.unwrap_or(true),
            allowed_hosts,
            allowed_origins,
        })
    }
}

fn validate_hosts(hosts: Vec<String>) -> Result<Vec<String>, McpConfigError> {
    let invalid = |reason: String| McpConfigError {
        key: "allowed_hosts",
        reason,
    };
    if hosts.is_empty() {
        return Err(invalid(
            "the list is empty; name the hosts clients use, or [\"*\"] to accept any Host (only behind a proxy that checks it)".into(),
        ));
    }
    if hosts.iter().any(|h| h.trim() == "*") {
        if hosts.len() > 1 {
            return Err(invalid("\"*\" accepts any Host; give it alone".into()));
        }
        return Ok(Vec::new());
    }
    for host in &hosts {
        let h = host.trim();
        // `::1` is a bare IPv6 address (an authority needs brackets); both forms are fine.
        let bare_ipv6 = h.parse::<std::net::Ipv6Addr>().is_ok();
        let authority = h.parse::<axum::http::uri::Authority>();
        let ok = bare_ipv6
            || authority.is_ok_and(|a| a.as_str() == h && !h.contains('@') && !h.is_empty());
        if !ok {
            return Err(invalid(format!(
                "{host:?} is not a host name, an IP address or host:port"
            )));
        }
    }
    Ok(hosts.into_iter().map(|h| h.trim().to_owned()).collect())
}

fn validate_origins(origins: Vec<String>) -> Result<Vec<String>, McpConfigError> {
    for origin in &origins {
        let o = origin.trim();
        if o == "null" {
            continue;
        }
        let base = o.strip_suffix(":*").unwrap_or(o);
        let uri = base.parse::<axum::http::Uri>();
        let ok = uri.is_ok_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.authority().is_some()
                && (u.path().is_empty() || u.path() == "/")
                && u.query().is_none()
                // `:*` replaces the port: `http://x:80:*` is not an origin.
                && !(o.ends_with(":*") && u.port().is_some())
        });
        if !ok {
            return Err(McpConfigError {
                key: "allowed_origins",
                reason: format!(
                    "{origin:?} is not an origin like \"https://app.example.com\", \"http://localhost:*\" (any port) or \"null\""
                ),
            });
        }
    }
    Ok(origins.into_iter().map(|o| o.trim().to_owned()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(toml_text: &str) -> RawMcpConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn defaults_are_loopback_only() {
        let c = RawMcpConfig::default().validate().unwrap();
        assert!(c.enabled);
        assert_eq!(c.allowed_hosts, ["localhost", "127.0.0.1", "::1"]);
        assert!(
            c.allowed_origins
                .iter()
                .all(|o| o.contains("localhost") || o.contains("127.0.0.1") || o.contains("[::1]"))
        );
    }

    #[test]
    fn hosts_and_origins_are_checked() {
        let c = raw(
            "allowed_hosts = [\"kakoi.internal\", \"kakoi:8080\", \"[::1]:9\", \"10.0.0.2\"]\nallowed_origins = [\"https://app.example.com\", \"http://localhost:*\", \"null\"]",
        )
        .validate()
        .unwrap();
        assert_eq!(c.allowed_hosts.len(), 4);
        assert_eq!(c.allowed_origins.len(), 3);
        assert_eq!(
            raw("allowed_hosts = [\"*\"]")
                .validate()
                .unwrap()
                .allowed_hosts,
            Vec::<String>::new()
        );
        for (text, needle) in [
            ("allowed_hosts = []", "empty"),
            ("allowed_hosts = [\"*\", \"localhost\"]", "alone"),
            ("allowed_hosts = [\"http://x\"]", "not a host"),
            ("allowed_hosts = [\"a b\"]", "not a host"),
            ("allowed_origins = [\"localhost\"]", "not an origin"),
            ("allowed_origins = [\"ftp://x\"]", "not an origin"),
            ("allowed_origins = [\"https://x/path\"]", "not an origin"),
            ("allowed_origins = [\"http://x:80:*\"]", "not an origin"),
        ] {
            let e = raw(text).validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(e.starts_with("invalid configuration value for mcp."), "{e}");
        }
        assert!(
            toml::from_str::<RawMcpConfig>("allowed_host = []")
                .unwrap_err()
                .to_string()
                .contains("unknown field")
        );
    }

    #[test]
    fn an_empty_origin_list_refuses_every_origin() {
        let c = raw("allowed_origins = []").validate().unwrap();
        assert!(c.allowed_origins.is_empty());
    }
}
