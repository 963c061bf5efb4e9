//! The content digest of an environment.
//!
//! `sha256` over a canonical JSON document holding everything that decides what gets
//! installed: the normalized requirements, the toolchain identity (Nix store path, or host
//! python + uv + ruff versions), the interpreter (path, version, ABI tag), the platform,
//! the resolution options, and the build recipe version (how kakoi calls uv). The first
//! 128 bits, in hex, name the directory `<data>/envs/v1/<digest>`.

use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// Version of the way kakoi builds envs (uv flags, layout, pyc mode). Bump it when a change
/// would make an existing env differ from what a new build produces.
pub const RECIPE: &str = "kakoi-env-recipe-2: uv pip compile --generate-hashes [--no-build]; uv venv; uv pip sync --link-mode hardlink (cache in the build dir) [--no-build]; python -I -S compileall unchecked-hash; wheels first, source builds in a private cache";

/// Length of a digest in hex characters.
pub const DIGEST_LEN: usize = 32;

/// Everything an env digest covers.
#[derive(Debug, Clone, Serialize)]
pub struct DigestInput<'a> {
    /// [`RECIPE`].
    pub recipe: &'a str,
    /// Normalized requirement lines.
    pub requirements: &'a [String],
    /// Toolchain identity.
    pub toolchain: &'a str,
    /// Interpreter identity (path, version, ABI).
    pub interpreter: &'a str,
    /// Platform (`x86_64-linux-glibc2.36`).
    pub platform: &'a str,
    /// `--index-url`, if any.
    pub index_url: Option<&'a str>,
    /// `--extra-index-url`s, in order.
    pub extra_index_urls: &'a [String],
    /// `--exclude-newer`, if any.
    pub exclude_newer: Option<&'a str>,
}

impl DigestInput<'_> {
    /// The canonical document that is hashed (serde serializes fields in declaration order).
    pub fn canonical(&self) -> String {
        serde_json::to_string(self).expect("a digest input always serializes")
    }

    /// The digest: the first [`DIGEST_LEN`] hex characters of the sha256 of [`canonical`].
    ///
    /// [`canonical`]: DigestInput::canonical
    pub fn digest(&self) -> String {
        let hash = Sha256::digest(self.canonical().as_bytes());
        let mut hex = hex::encode(hash);
        hex.truncate(DIGEST_LEN);
        hex
    }
}

/// Whether `s` looks like a digest or digest prefix (lowercase hex, at most [`DIGEST_LEN`]).
pub fn is_digest_prefix(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= DIGEST_LEN
        && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(req: &'a [String], extra: &'a [String]) -> DigestInput<'a> {
        DigestInput {
            recipe: RECIPE,
            requirements: req,
            toolchain: "host uv=0.13.9 ruff=0.17.6",
            interpreter: "/usr/bin/python3.11 cpython-3.11.2 cpython-311-x86_64-linux-gnu",
            platform: "x86_64-linux-glibc2.36",
            index_url: None,
            extra_index_urls: extra,
            exclude_newer: None,
        }
    }

    #[test]
    fn every_field_changes_the_digest() {
        let req = vec!["six".to_string()];
        let base = input(&req, &[]).digest();
        assert_eq!(base.len(), DIGEST_LEN);
        assert!(is_digest_prefix(&base));
        assert_eq!(base, input(&req, &[]).digest(), "digest is deterministic");
        let other_req = vec!["six==1.17.0".to_string()];
        assert_ne!(base, input(&other_req, &[]).digest());
        let extra = vec!["https://example.invalid/simple".to_string()];
        assert_ne!(base, input(&req, &extra).digest());
        let mut i = input(&req, &[]);
        i.exclude_newer = Some("2025-01-01T00:00:00Z");
        assert_ne!(base, i.digest());
        let mut i = input(&req, &[]);
        i.index_url = Some("https://pypi.org/simple");
        assert_ne!(base, i.digest());
        let mut i = input(&req, &[]);
        i.toolchain = "nix /nix/store/0000-kakoi-toolchain";
        assert_ne!(base, i.digest());
        let mut i = input(&req, &[]);
        i.interpreter = "/usr/bin/python3.12 cpython-3.12.1 cpython-312-x86_64-linux-gnu";
        assert_ne!(base, i.digest());
        let mut i = input(&req, &[]);
        i.platform = "aarch64-linux-glibc2.36";
        assert_ne!(base, i.digest());
        let mut i = input(&req, &[]);
        i.recipe = "another recipe";
        assert_ne!(base, i.digest());
    }

    #[test]
    fn prefixes_are_lowercase_hex() {
        assert!(is_digest_prefix("0af3"));
        assert!(!is_digest_prefix(""));
        assert!(!is_digest_prefix("0AF3"));
        assert!(!is_digest_prefix("../x"));
        assert!(!is_digest_prefix(&"a".repeat(DIGEST_LEN + 1)));
    }
}
