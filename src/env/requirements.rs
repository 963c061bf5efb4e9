//! `requirements.txt` normalization: what goes into the digest is exactly what uv sees.
//!
//! Kept: one requirement per line (PEP 508 specifiers, extras, markers, direct URLs,
//! per-requirement `--hash` options). Removed: comments, blank lines, line continuations,
//! runs of whitespace. Lines are sorted and deduplicated, so reordering a file does not
//! change its environment. Refused before uv runs: options that change where packages
//! come from or pull in other files (`-r`, `-c`, `-e`, `--index-url`, ...), because they
//! would escape the digest or name host files the build sandbox cannot see. The
//! resolution options have their own flags (`--index-url`, `--exclude-newer`, ...).
//! Everything else — including a malformed specifier — is uv's to judge, so its message
//! reaches the user unchanged.

/// Largest requirements text accepted.
pub const MAX_BYTES: usize = 256 * 1024;
/// Largest number of requirement lines accepted.
pub const MAX_LINES: usize = 2000;

/// Why a requirements file was refused before uv ran.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequirementsError {
    /// The file is larger than [`MAX_BYTES`] or has more than [`MAX_LINES`] requirements.
    #[error("requirements are too large ({what}; the limit is {limit})")]
    TooLarge {
        /// What was counted.
        what: String,
        /// The limit.
        limit: String,
    },
    /// The text is not UTF-8 or holds a NUL byte.
    #[error("requirements are not text: {reason}")]
    NotText {
        /// Why.
        reason: &'static str,
    },
    /// A pip option line that kakoi does not pass through.
    #[error("requirements line {line}: {option:?} is not supported: {reason}")]
    Option {
        /// 1-based line number in the original text.
        line: usize,
        /// The option as written.
        option: String,
        /// Why, and what to use instead.
        reason: &'static str,
    },
    /// Nothing is left after removing comments and blank lines.
    #[error("requirements are empty (no package named)")]
    Empty,
}

/// Normalized requirements: sorted, deduplicated lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirements {
    lines: Vec<String>,
}

impl Requirements {
    /// Normalize a requirements text.
    pub fn parse(bytes: &[u8]) -> Result<Requirements, RequirementsError> {
        if bytes.len() > MAX_BYTES {
            return Err(RequirementsError::TooLarge {
                what: format!("{} bytes", bytes.len()),
                limit: format!("{MAX_BYTES} bytes"),
            });
        }
        if bytes.contains(&0) {
            return Err(RequirementsError::NotText {
                reason: "it contains a NUL byte",
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|_| RequirementsError::NotText {
            reason: "it is not UTF-8",
        })?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut lines = Vec::new();
        let mut pending = String::new();
        let mut pending_start = 0;
        for (index, raw) in text.lines().enumerate() {
            if pending.is_empty() {
                pending_start = index + 1;
            }
            // pip: a backslash at the end of a line joins it with the next one.
            if let Some(head) = raw.strip_suffix('\\') {
                pending.push_str(head);
                pending.push(' ');
                continue;
            }
            pending.push_str(raw);
            let logical = std::mem::take(&mut pending);
            if let Some(line) = normalize_line(&logical, pending_start)? {
                lines.push(line);
            }
        }
        if !pending.is_empty()
            && let Some(line) = normalize_line(&pending, pending_start)?
        {
            lines.push(line);
        }
        lines.sort();
        lines.dedup();
        if lines.is_empty() {
            return Err(RequirementsError::Empty);
        }
        if lines.len() > MAX_LINES {
            return Err(RequirementsError::TooLarge {
                what: format!("{} requirements", lines.len()),
                limit: format!("{MAX_LINES} requirements"),
            });
        }
        Ok(Requirements { lines })
    }

    /// The normalized lines.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The normalized text given to uv (one requirement per line, trailing newline).
    pub fn to_text(&self) -> String {
        let mut text = self.lines.join("\n");
        text.push('\n');
        text
    }
}

/// Strip comments and whitespace; refuse option lines. `None` for blank lines.
fn normalize_line(logical: &str, line: usize) -> Result<Option<String>, RequirementsError> {
    // pip: `#` starts a comment at the start of a line or after whitespace (a `#` inside a
    // URL fragment such as `#egg=` or `#sha256=` is not a comment).
    let mut end = logical.len();
    let bytes = logical.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            end = i;
            break;
        }
    }
    let words: Vec<&str> = logical[..end].split_whitespace().collect();
    let Some(first) = words.first() else {
        return Ok(None);
    };
    if first.starts_with('-') {
        let option = first.split('=').next().unwrap_or(first).to_string();
        let reason = match option.as_str() {
            "-r" | "--requirement" | "-c" | "--constraint" => {
                "includes name files the build sandbox cannot see; put every requirement in one file"
            }
            "-e" | "--editable" => "editable installs need a source tree on the host",
            "-i" | "--index-url" | "--extra-index-url" | "--find-links" | "-f" | "--no-index" => {
                "indexes are resolution options; use kakoi's --index-url / --extra-index-url flags"
            }
            _ => "pip options are not passed through; use kakoi's flags",
        };
        return Err(RequirementsError::Option {
            line,
            option,
            reason,
        });
    }
    Ok(Some(words.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Vec<String>, RequirementsError> {
        Requirements::parse(s.as_bytes()).map(|r| r.lines().to_vec())
    }

    #[test]
    fn comments_blank_lines_and_order_do_not_matter() {
        let a = parse("# tools\nnumpy==2.1.0\n\n  pandas   >= 2  # data\nsix\n").unwrap();
        let b = parse("six\npandas >= 2\nnumpy==2.1.0\nsix\n").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, vec!["numpy==2.1.0", "pandas >= 2", "six"]);
    }

    #[test]
    fn continuations_join_and_url_fragments_stay() {
        let r =
            parse("attrs==24.2.0 \\\n    --hash=sha256:abc\npkg @ https://h/p.tar.gz#sha256=ff\n")
                .unwrap();
        assert_eq!(
            r,
            vec![
                "attrs==24.2.0 --hash=sha256:abc",
                "pkg @ https://h/p.tar.gz#sha256=ff"
            ]
        );
    }

    #[test]
    fn options_are_refused_with_their_line() {
        for (text, option) in [
            ("six\n-r other.txt\n", "-r"),
            ("six\n--index-url=https://x/simple\n", "--index-url"),
            ("-e .\n", "-e"),
            ("--pre\n", "--pre"),
        ] {
            match parse(text) {
                Err(RequirementsError::Option {
                    option: o, line, ..
                }) => {
                    assert_eq!(o, option);
                    assert!(line >= 1);
                }
                other => panic!("{text:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn empty_binary_and_huge_inputs_are_refused() {
        assert_eq!(parse("# nothing\n\n"), Err(RequirementsError::Empty));
        assert!(matches!(
            Requirements::parse(b"six\0"),
            Err(RequirementsError::NotText { .. })
        ));
        assert!(matches!(
            Requirements::parse(b"\xff\xfe"),
            Err(RequirementsError::NotText { .. })
        ));
        let huge = "a\n".repeat(MAX_BYTES);
        assert!(matches!(
            Requirements::parse(huge.as_bytes()),
            Err(RequirementsError::TooLarge { .. })
        ));
    }

    #[test]
    fn malformed_specifiers_are_left_to_uv() {
        // uv reports these with its own message; kakoi does not second-guess PEP 508.
        assert_eq!(parse("numpy>>=1\n").unwrap(), vec!["numpy>>=1"]);
    }
}
