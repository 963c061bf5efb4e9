//! The Nix toolchain: realise `nix-env/` (python3, uv, ruff as one closure) with
//! `nix build`, list its closure, and bind only those store paths into sandboxes.
//!
//! The expressions are compiled into kakoi and written to `<data>/toolchain/nix-env/` so the
//! binary works from any directory. `nix build --out-link <data>/toolchain/nix-result`
//! registers a GC root, so `nix-collect-garbage` does not delete a toolchain envs point at.
//! The realised store path is cached in `<data>/toolchain/nix.json`, keyed by the hash of the
//! expressions, so a run does not evaluate Nix again.
//!
//! The command lines and the parsing of Nix's output are pure functions, unit-tested
//! without Nix.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

/// `nix-env/flake.nix`.
pub const FLAKE_NIX: &str = include_str!("../../nix-env/flake.nix");
/// `nix-env/flake.lock`.
pub const FLAKE_LOCK: &str = include_str!("../../nix-env/flake.lock");
/// `nix-env/default.nix`.
pub const DEFAULT_NIX: &str = include_str!("../../nix-env/default.nix");
/// `nix-env/toolchain.nix`.
pub const TOOLCHAIN_NIX: &str = include_str!("../../nix-env/toolchain.nix");

/// The Nix store directory.
pub const STORE_DIR: &str = "/nix/store";

/// Why the Nix toolchain could not be realised.
#[derive(Debug, thiserror::Error)]
pub enum NixError {
    /// A Nix command could not be started.
    #[error("cannot run {command}")]
    Spawn {
        /// The command line.
        command: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A Nix command failed.
    #[error("{command} exited with {code}: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Exit code (-1 for a signal).
        code: i32,
        /// Its stderr (last lines).
        stderr: String,
    },
    /// Nix printed something that is not a store path.
    #[error("unexpected output from {command}: {line:?} is not a path in {STORE_DIR}")]
    NotAStorePath {
        /// The command line.
        command: String,
        /// The offending line.
        line: String,
    },
    /// The realised toolchain lacks a program.
    #[error("the Nix toolchain {out} has no {program}")]
    Missing {
        /// The store path.
        out: PathBuf,
        /// `bin/python3`, `bin/uv` or `bin/ruff`.
        program: &'static str,
    },
    /// Writing the expressions or the cache failed.
    #[error("cannot write {path}")]
    Write {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A program and its arguments, kept as data so tests can check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    /// Program (looked up in PATH).
    pub program: String,
    /// Arguments.
    pub args: Vec<String>,
}

impl CommandLine {
    /// The line as a shell-like string for messages.
    pub fn display(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        cmd
    }
}

/// `nix build` of the flake's default package, printing the out path, with a GC root.
pub fn build_command(flake_dir: &Path, out_link: &Path) -> CommandLine {
    CommandLine {
        program: "nix".into(),
        args: vec![
            "--extra-experimental-features".into(),
            "nix-command flakes".into(),
            "build".into(),
            "--print-out-paths".into(),
            "--out-link".into(),
            out_link.display().to_string(),
            format!("path:{}#default", flake_dir.display()),
        ],
    }
}

/// `nix-build` of `default.nix`, for Nix installations without flakes.
pub fn legacy_build_command(flake_dir: &Path, out_link: &Path) -> CommandLine {
    CommandLine {
        program: "nix-build".into(),
        args: vec![
            flake_dir.join("default.nix").display().to_string(),
            "--out-link".into(),
            out_link.display().to_string(),
        ],
    }
}

/// `nix-store --query --requisites`: every store path the toolchain needs at run time.
pub fn closure_command(out: &Path) -> CommandLine {
    CommandLine {
        program: "nix-store".into(),
        args: vec![
            "--query".into(),
            "--requisites".into(),
            out.display().to_string(),
        ],
    }
}

/// Check that `line` is a top-level store path (`/nix/store/<32 base32 chars>-<name>`).
pub fn parse_store_path(line: &str) -> Option<PathBuf> {
    let rest = line.strip_prefix(STORE_DIR)?.strip_prefix('/')?;
    let (hash, name) = rest.split_at_checked(32)?;
    let name = name.strip_prefix('-')?;
    // Nix's base32 alphabet: digits and lowercase letters without e, o, t, u.
    let base32 = |c: char| c.is_ascii_digit() || (c.is_ascii_lowercase() && !"eotu".contains(c));
    let name_ok = |c: char| c.is_ascii_alphanumeric() || "+-._?=".contains(c);
    (hash.chars().all(base32) && !name.is_empty() && name.chars().all(name_ok))
        .then(|| PathBuf::from(line))
}

/// Parse the store paths a Nix command printed, one per line.
pub fn parse_store_paths(command: &str, stdout: &str) -> Result<Vec<PathBuf>, NixError> {
    let mut paths = Vec::new();
    for line in stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match parse_store_path(line) {
            Some(path) => paths.push(path),
            None => {
                return Err(NixError::NotAStorePath {
                    command: command.into(),
                    line: line.into(),
                });
            }
        }
    }
    paths.sort();
    paths.dedup();
    Ok(paths)
}

/// The hash of the embedded expressions (the cache key of a realised toolchain).
pub fn expressions_hash() -> String {
    let mut h = Sha256::new();
    for part in [FLAKE_NIX, FLAKE_LOCK, DEFAULT_NIX, TOOLCHAIN_NIX] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// A realised Nix toolchain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NixToolchain {
    /// The toolchain's store path (`buildEnv` of python3, uv, ruff).
    pub out: PathBuf,
    /// Its closure: every store path to bind read-only.
    pub closure: Vec<PathBuf>,
    /// [`expressions_hash`] at realisation time.
    pub expressions: String,
}

impl NixToolchain {
    /// `bin/python3` of the toolchain.
    pub fn python(&self) -> PathBuf {
        self.out.join("bin/python3")
    }
    /// `bin/uv`.
    pub fn uv(&self) -> PathBuf {
        self.out.join("bin/uv")
    }
    /// `bin/ruff`.
    pub fn ruff(&self) -> PathBuf {
        self.out.join("bin/ruff")
    }
}

/// Whether `nix` is on PATH.
pub fn available() -> bool {
    find_in_path("nix").is_some()
}

/// Look a program up in `PATH`.
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The cached realisation, if it matches the embedded expressions and still exists.
pub fn cached(toolchain_dir: &Path) -> Option<NixToolchain> {
    let text = std::fs::read(toolchain_dir.join("nix.json")).ok()?;
    let cached: NixToolchain = serde_json::from_slice(&text).ok()?;
    (cached.expressions == expressions_hash() && cached.out.is_dir()).then_some(cached)
}

/// Realise the toolchain (or reuse the cached realisation).
pub fn realise(toolchain_dir: &Path) -> Result<NixToolchain, NixError> {
    if let Some(toolchain) = cached(toolchain_dir) {
        return Ok(toolchain);
    }
    let flake_dir = toolchain_dir.join("nix-env");
    let write = |name: &str, text: &str| {
        let path = flake_dir.join(name);
        std::fs::create_dir_all(&flake_dir)
            .and_then(|()| std::fs::write(&path, text))
            .map_err(|source| NixError::Write { path, source })
    };
    write("flake.nix", FLAKE_NIX)?;
    write("flake.lock", FLAKE_LOCK)?;
    write("default.nix", DEFAULT_NIX)?;
    write("toolchain.nix", TOOLCHAIN_NIX)?;
    let out_link = toolchain_dir.join("nix-result");
    let build = build_command(&flake_dir, &out_link);
    let out = match run(&build) {
        Ok(stdout) => stdout,
        // Without flakes enabled or supported, fall back to the non-flake expression.
        Err(NixError::Failed { .. }) => run(&legacy_build_command(&flake_dir, &out_link))?,
        Err(e) => return Err(e),
    };
    let outs = parse_store_paths(&build.display(), &out)?;
    let out = outs
        .last()
        .cloned()
        .ok_or_else(|| NixError::NotAStorePath {
            command: build.display(),
            line: String::new(),
        })?;
    let closure_line = closure_command(&out);
    let closure = parse_store_paths(&closure_line.display(), &run(&closure_line)?)?;
    let toolchain = NixToolchain {
        out,
        closure,
        expressions: expressions_hash(),
    };
    for (program, path) in [
        ("bin/python3", toolchain.python()),
        ("bin/uv", toolchain.uv()),
        ("bin/ruff", toolchain.ruff()),
    ] {
        if !path.exists() {
            return Err(NixError::Missing {
                out: toolchain.out.clone(),
                program,
            });
        }
    }
    let json = serde_json::to_vec(&toolchain).expect("serializable");
    let cache = toolchain_dir.join("nix.json");
    std::fs::write(&cache, json).map_err(|source| NixError::Write {
        path: cache,
        source,
    })?;
    Ok(toolchain)
}

fn run(line: &CommandLine) -> Result<String, NixError> {
    let output = line.command().output().map_err(|source| NixError::Spawn {
        command: line.display(),
        source,
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        return Err(NixError::Failed {
            command: line.display(),
            code: output.status.code().unwrap_or(-1),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The version a program prints for `--version` (`uv 0.7.2` → `0.7.2`).
pub fn parse_version(output: &str) -> Option<String> {
    output
        .split_whitespace()
        .nth(1)
        .filter(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "/nix/store/0c4q3ihx7ai3bg0j2l1xk9nq7mhbr5rn-kakoi-toolchain";

    #[test]
    fn command_lines_are_what_nix_expects() {
        let build = build_command(Path::new("/d/nix-env"), Path::new("/d/nix-result"));
        assert_eq!(
            build.display(),
            "nix --extra-experimental-features nix-command flakes build --print-out-paths --out-link /d/nix-result path:/d/nix-env#default"
        );
        assert_eq!(
            legacy_build_command(Path::new("/d/nix-env"), Path::new("/d/r")).display(),
            "nix-build /d/nix-env/default.nix --out-link /d/r"
        );
        assert_eq!(
            closure_command(Path::new(OUT)).display(),
            format!("nix-store --query --requisites {OUT}")
        );
    }

    #[test]
    fn store_paths_are_validated() {
        assert_eq!(parse_store_path(OUT), Some(PathBuf::from(OUT)));
        for bad in [
            "/nix/store/short-name",
            "/nix/store/0c4q3ihx7ai3bg0j2l1xk9nq7mhbr5rn",
            "/nix/store/0c4q3ihx7ai3bg0j2l1xk9nq7mhbr5rn-",
            "/nix/store/0c4q3ihx7ai3bg0j2l1xk9nq7mhbr5ru-x", // 'u' is not base32
            "/nix/store/0c4q3ihx7ai3bg0j2l1xk9nq7mhbr5rn-a/b",
            "/usr/bin/python3",
            "warning: Git tree is dirty",
        ] {
            assert_eq!(parse_store_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn closure_listing_is_parsed_sorted_and_deduplicated() {
        let stdout = format!(
            "/nix/store/9x1a2b3c4d5f6g7h8i9j0k1l2m3n4p5q-python3-3.12.11\n\n{OUT}\n/nix/store/1x1a2b3c4d5f6g7h8i9j0k1l2m3n4p5q-glibc-2.40-66\n{OUT}\n"
        );
        let paths = parse_store_paths("nix-store -qR", &stdout).unwrap();
        assert_eq!(paths.len(), 3);
        assert!(paths.windows(2).all(|w| w[0] < w[1]));
        let err = parse_store_paths("nix build", "building '/nix/store/x.drv'...\n").unwrap_err();
        assert!(matches!(err, NixError::NotAStorePath { .. }), "{err}");
    }

    #[test]
    fn versions_are_read_from_version_output() {
        assert_eq!(parse_version("uv 0.7.2\n").as_deref(), Some("0.7.2"));
        assert_eq!(parse_version("ruff 0.11.8").as_deref(), Some("0.11.8"));
        assert_eq!(parse_version("Python 3.12.11").as_deref(), Some("3.12.11"));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn the_embedded_lock_pins_nixpkgs_to_a_revision() {
        let lock: serde_json::Value = serde_json::from_str(FLAKE_LOCK).unwrap();
        let locked = &lock["nodes"]["nixpkgs"]["locked"];
        let rev = locked["rev"].as_str().unwrap();
        assert_eq!(rev.len(), 40);
        assert!(rev.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(locked["narHash"].as_str().unwrap().starts_with("sha256-"));
        assert!(
            FLAKE_NIX.contains(rev),
            "flake.nix and flake.lock name the same revision"
        );
        assert!(DEFAULT_NIX.contains("flake.lock"));
        for tool in ["python3", "uv", "ruff"] {
            assert!(
                TOOLCHAIN_NIX.contains(tool),
                "{tool} missing from toolchain.nix"
            );
        }
        assert_eq!(expressions_hash().len(), 64);
    }
}
