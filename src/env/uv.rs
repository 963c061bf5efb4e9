//! The three sandboxed steps of a build, as [`RunSpec`]s, and the reading of uv's output.
//!
//! Every step sees the toolchain read-only at its host paths, the env being built writable
//! at its *final* path, and nothing else of the host but what its step needs:
//! - **resolve** (`uv pip compile`) and **install** (`uv venv` + `uv pip sync`): the build's
//!   directory is bound writable at `<data>/envs`, so the env is at `<data>/envs/v1/<digest>`
//!   and the uv cache at `<data>/envs/uv-cache`, in the same mount: uv hard-links installed
//!   files out of the cache instead of copying them; plus the host's network and resolver
//!   files;
//! - **compile** (the interpreter's `compileall`, `-I -S`): the env alone, no cache, no
//!   network.
//!
//! Which uv cache, and whether packages may be built from source, is the [`CacheMode`]:
//! builds from wheels alone use the shared cache (moved into the build's directory for the
//! time of the build), because in them no package code runs while that cache is writable (uv
//! only downloads and unpacks, and bytecode is compiled in the separate step without the
//! cache); a build that needs to run a package's build code gets a private cache of its own,
//! removed after the build, so it cannot tamper with what other builds use. uv's stdout is
//! sent to stderr (`1>&2`) so that a streamed build never writes to the launcher's stdout
//! (`--json`).

use std::path::{Path, PathBuf};

use super::progress::{BuildStep, describe_uv_line};
use super::store::{BuildLimits, ResolveOptions};
use super::toolchain::{Interpreter, Toolchain};
use crate::spec::{Bind, Limits, Network, RunSpec};

/// Name of the normalized requirements inside an env.
pub(crate) const REQUIREMENTS_IN: &str = "requirements.in";
/// Name of the lock (uv pip compile output) inside an env.
pub(crate) const REQUIREMENTS_LOCK: &str = "requirements.lock";
/// Name of the venv inside an env.
pub(crate) const VENV: &str = "venv";

/// `SOURCE_DATE_EPOCH` of builds: 1980-01-01, the earliest time a zip (wheel) can hold, so
/// wheels built from sdists get fixed timestamps.
pub(crate) const SOURCE_DATE_EPOCH: &str = "315532800";

/// Host CA bundle passed to uv as `SSL_CERT_FILE` when it exists (it is visible in the
/// sandbox through the `/etc/ssl` bind), so indexes behind a corporate or local CA work.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Proxy variables passed from the launcher's environment to uv.
const PROXY_VARS: &[&str] = &[
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// The uv cache a build uses, and what that allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheMode {
    /// The store's shared cache, wheels only (`--no-build`): uv resolves and installs from
    /// pre-built wheels and no package code runs while the cache is writable.
    Shared,
    /// A cache of this build's own (removed after it): source builds allowed, their build
    /// code never sees the shared cache.
    Private,
}

impl CacheMode {
    /// The name recorded in `kakoi-env.json` (`shared`, `private`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            CacheMode::Shared => "shared",
            CacheMode::Private => "private",
        }
    }
}

/// Whether uv failed because a package has no wheel and `--no-build` forbids building it
/// (then the build is retried with a private cache). uv 0.13 says, when resolving, "...
/// building from source is disabled ..." and, when installing, "Building source
/// distributions is disabled, but attempted to build `x`".
pub(crate) fn needs_source_build(stderr: &str) -> bool {
    let lower = stderr.to_ascii_lowercase();
    lower.contains("building from source is disabled")
        || lower.contains("building source distributions is disabled")
}

/// The `compile` step's program (`python -I -S -c`): every `.py` under the venv's `lib`
/// compiled to an unchecked-hash pyc (PEP 552), at the env's final path. Files that do not
/// compile (Python 2 leftovers, templates) are skipped, as uv and pip do; anything else that
/// goes wrong fails the step.
const COMPILE_PY: &str = "import compileall, py_compile, sys\n\
compileall.compile_dir(sys.argv[1], quiet=1, workers=0, \
invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)\n";

/// Name of the uv cache inside a build's directory.
pub(crate) const BUILD_CACHE: &str = "uv-cache";

/// What a build step needs to know.
pub(crate) struct BuildContext<'a> {
    pub toolchain: &'a Toolchain,
    pub interpreter: &'a Interpreter,
    pub options: &'a ResolveOptions,
    pub limits: &'a BuildLimits,
    /// Final path of the env (where the staging directory is bound).
    pub final_dir: &'a Path,
    /// Host staging directory: the env being built, `<build_root>/v1/<digest>`.
    pub staging: &'a Path,
    /// The build's host directory, bound at `<data>/envs` for the uv steps; it holds the
    /// env and, at [`BUILD_CACHE`], the uv cache (the shared one moved in, or a private one).
    pub build_root: &'a Path,
    /// Which cache the uv steps find at [`BUILD_CACHE`].
    pub mode: CacheMode,
}

impl BuildContext<'_> {
    /// `<data>/envs`: where the build's directory is bound for the uv steps.
    fn sandbox_root(&self) -> PathBuf {
        self.final_dir
            .parent()
            .and_then(Path::parent)
            .unwrap_or(self.final_dir)
            .to_path_buf()
    }

    /// The uv cache as the uv steps see it.
    pub(crate) fn sandbox_cache(&self) -> PathBuf {
        self.sandbox_root().join(BUILD_CACHE)
    }

    /// The sandbox request of one step.
    pub(crate) fn spec(&self, step: BuildStep) -> RunSpec {
        let final_dir = self.final_dir.display().to_string();
        let uv = self.toolchain.uv.display().to_string();
        let python = self.interpreter.path.display().to_string();
        let mut argv: Vec<String> = vec!["/bin/sh".into(), "-c".into()];
        match step {
            BuildStep::Resolve => {
                argv.push(r#"cd "$0" && exec "$@" >/dev/null"#.into());
                argv.extend([final_dir, uv, "pip".into(), "compile".into()]);
                argv.extend(
                    [
                        REQUIREMENTS_IN,
                        "--output-file",
                        REQUIREMENTS_LOCK,
                        "--generate-hashes",
                        "--custom-compile-command",
                        "kakoi env build",
                        "--no-config",
                        "--python",
                    ]
                    .map(String::from),
                );
                argv.push(python);
                if let Some(t) = &self.options.exclude_newer {
                    argv.extend(["--exclude-newer".into(), t.clone()]);
                }
                if self.mode == CacheMode::Shared {
                    argv.push("--no-build".into());
                }
            }
            BuildStep::Install => {
                argv.push(
                    r#"cd "$0" && "$1" venv --quiet --no-config --python "$2" venv 1>&2 && shift 2 && exec "$@" 1>&2"#
                        .into(),
                );
                argv.extend([final_dir, uv.clone(), python, uv]);
                argv.extend(
                    [
                        "pip",
                        "sync",
                        REQUIREMENTS_LOCK,
                        "--python",
                        "venv/bin/python",
                        // The cache and the env are in one mount (the build's directory):
                        // uv links files instead of copying them. Only uv writes the cache
                        // (see `CacheMode`); a private cache is removed after the build.
                        "--link-mode",
                        "hardlink",
                        "--require-hashes",
                        "--no-config",
                    ]
                    .map(String::from),
                );
                if self.mode == CacheMode::Shared {
                    argv.push("--no-build".into());
                }
            }
            BuildStep::Compile => {
                // No uv here: the interpreter alone, isolated (-I) and without `site` (-S),
                // so no `.pth` file of the installed packages is executed.
                argv.push(r#"cd "$0" && exec "$@" 1>&2"#.into());
                argv.extend([
                    final_dir.clone(),
                    python,
                    "-I".into(),
                    "-S".into(),
                    "-c".into(),
                    COMPILE_PY.into(),
                    format!("{final_dir}/{VENV}/lib"),
                ]);
            }
        }
        let uv_step = step != BuildStep::Compile;
        if uv_step {
            if let Some(url) = &self.options.index_url {
                argv.extend(["--index-url".into(), url.clone()]);
            }
            for url in &self.options.extra_index_urls {
                argv.extend(["--extra-index-url".into(), url.clone()]);
            }
        }
        let cache = self.sandbox_cache().display().to_string();
        let mut env: Vec<(String, String)> = [
            ("UV_CACHE_DIR", cache.as_str()),
            ("UV_NO_CONFIG", "1"),
            ("UV_PYTHON_DOWNLOADS", "never"),
            ("UV_NO_PROGRESS", "1"),
            ("NO_COLOR", "1"),
            // Deterministic pycs that are never re-validated against their sources: the env
            // is read-only at run time, so nothing can make them stale (PEP 552).
            ("PYC_INVALIDATION_MODE", "UNCHECKED_HASH"),
            ("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if Path::new(CA_BUNDLE).is_file() {
            env.push(("SSL_CERT_FILE".into(), CA_BUNDLE.into()));
        }
        if uv_step {
            for var in PROXY_VARS {
                if let Ok(value) = std::env::var(var) {
                    env.push((var.to_string(), value));
                }
            }
        }
        let same = |p: &PathBuf| Bind {
            host: p.clone(),
            sandbox: p.clone(),
        };
        let binds_rw = if uv_step {
            vec![Bind {
                host: self.build_root.into(),
                sandbox: self.sandbox_root(),
            }]
        } else {
            vec![Bind {
                host: self.staging.into(),
                sandbox: self.final_dir.into(),
            }]
        };
        RunSpec {
            argv: argv.into_iter().map(Into::into).collect(),
            env,
            limits: Limits {
                timeout: Some(self.limits.timeout_secs),
                cpu_time: None,
                memory: Some(self.limits.memory),
                pids: Some(self.limits.pids),
                cpus: Some(self.limits.cpus),
                output_limit: Some(8 << 20),
                tmp_size: Some(self.limits.tmp_size),
                nofile: Some(4096),
            },
            stdin: None,
            files: vec![],
            binds_ro: self.toolchain.binds.iter().map(same).collect(),
            binds_rw,
            collect: None,
            network: if uv_step {
                Network::Host
            } else {
                Network::None
            },
        }
    }
}

/// Largest uv message kept in an error.
const MAX_MESSAGE: usize = 16 * 1024;

/// uv's error output without its progress lines, capped (head and tail kept).
pub(crate) fn error_message(stderr: &str) -> String {
    let kept: Vec<&str> = stderr
        .lines()
        .filter(|l| describe_uv_line(l).is_none())
        .filter(|l| !l.starts_with("Using ") && !l.trim().is_empty())
        .collect();
    let text = if kept.is_empty() {
        stderr.trim().to_string()
    } else {
        kept.join("\n")
    };
    if text.len() <= MAX_MESSAGE {
        return text;
    }
    let mut head_end = MAX_MESSAGE / 2;
    while !text.is_char_boundary(head_end) {
        head_end -= 1;
    }
    let mut tail_start = text.len() - MAX_MESSAGE / 2;
    while !text.is_char_boundary(tail_start) {
        tail_start += 1;
    }
    format!(
        "{}\n[... {} bytes of uv output omitted ...]\n{}",
        &text[..head_end],
        tail_start - head_end,
        &text[tail_start..]
    )
}

/// Package pins (`name==version`) of a lock, in file order.
pub(crate) fn locked_packages(lock: &str) -> Vec<String> {
    lock.lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.trim_end_matches('\\').trim().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::toolchain::ToolchainKind;

    #[test]
    fn error_messages_drop_progress_and_keep_uvs_words() {
        let stderr = "Using Python 3.11.2 environment at: venv\nResolved 2 packages in 10ms\n  × No solution found when resolving dependencies:\n  ╰─▶ Because you require six==1.16.0 and six==1.17.0, we can conclude that your requirements are unsatisfiable.\n";
        let m = error_message(stderr);
        assert!(m.starts_with("  × No solution found"), "{m}");
        assert!(!m.contains("Resolved"));
        let long = "x".repeat(3 * MAX_MESSAGE);
        let m = error_message(&long);
        assert!(m.len() < MAX_MESSAGE + 100);
        assert!(m.contains("omitted"));
    }

    #[test]
    fn lock_pins_are_listed() {
        let lock = "# This file was autogenerated by uv\nattrs==24.2.0 \\\n    --hash=sha256:5c\n    # via -r requirements.in\nsix==1.17.0 \\\n    --hash=sha256:47\n";
        assert_eq!(locked_packages(lock), vec!["attrs==24.2.0", "six==1.17.0"]);
    }

    #[test]
    fn a_missing_wheel_is_recognised_in_both_steps() {
        // uv 0.13.9, `uv pip compile --no-build` and `uv pip sync --no-build`.
        let resolve = "error: No solution found when resolving dependencies\n  cause: Because pyyaml==5.3.1 has no usable wheels and you require pyyaml==5.3.1, we can conclude that your requirements are unsatisfiable.\n\nhint: Wheels are required for `pyyaml` because building from source is disabled for all packages (i.e., with `--no-build`)\n";
        let install = "error: Building source distributions is disabled, but attempted to build `kakoifails`\n";
        assert!(needs_source_build(resolve));
        assert!(needs_source_build(install));
        assert!(!needs_source_build(
            "error: No solution found when resolving dependencies:\n  Because you require six==1.16.0 and six==1.17.0, we can conclude that your requirements are unsatisfiable."
        ));
        assert!(!needs_source_build(""));
    }

    #[test]
    fn build_specs_confine_writes_to_the_staging_dir_and_cache() {
        let toolchain = crate::env::toolchain::tests_support::host_toolchain();
        let interpreter = Interpreter {
            path: "/usr/bin/python3.11".into(),
            version: "3.11.2".into(),
            implementation: "cpython".into(),
            soabi: "cpython-311-x86_64-linux-gnu".into(),
            platform: "x86_64-linux-glibc2.36".into(),
        };
        let options = ResolveOptions {
            index_url: Some("https://pypi.org/simple".into()),
            extra_index_urls: vec!["https://mirror.invalid/simple".into()],
            exclude_newer: Some("2025-06-01T00:00:00Z".into()),
            python: None,
        };
        let limits = BuildLimits::default();
        assert_eq!(toolchain.kind, ToolchainKind::Host);
        for mode in [CacheMode::Shared, CacheMode::Private] {
            let ctx = BuildContext {
                toolchain: &toolchain,
                interpreter: &interpreter,
                options: &options,
                limits: &limits,
                final_dir: Path::new("/var/lib/kakoi/envs/v1/abc"),
                staging: Path::new("/var/lib/kakoi/envs/v1/.staging/abc.1/v1/abc"),
                build_root: Path::new("/var/lib/kakoi/envs/v1/.staging/abc.1"),
                mode,
            };
            for step in [BuildStep::Resolve, BuildStep::Install, BuildStep::Compile] {
                let spec = ctx.spec(step);
                let argv: Vec<String> = spec
                    .argv
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
                let has = |flag: &str| argv.iter().any(|a| a == flag);
                assert_eq!(argv[0], "/bin/sh");
                // One writable bind: the env alone (compile), or the build's directory,
                // holding the env and the cache, at `<data>/envs` (uv).
                assert_eq!(spec.binds_rw.len(), 1, "{:?}", spec.binds_rw);
                let (host, sandbox) = if step == BuildStep::Compile {
                    (
                        "/var/lib/kakoi/envs/v1/.staging/abc.1/v1/abc",
                        "/var/lib/kakoi/envs/v1/abc",
                    )
                } else {
                    (
                        "/var/lib/kakoi/envs/v1/.staging/abc.1",
                        "/var/lib/kakoi/envs",
                    )
                };
                assert_eq!(spec.binds_rw[0].host, Path::new(host));
                assert_eq!(spec.binds_rw[0].sandbox, Path::new(sandbox));
                assert!(spec.binds_ro.iter().all(|b| b.host == b.sandbox));
                assert!(
                    spec.env
                        .iter()
                        .any(|(k, v)| k == "PYC_INVALIDATION_MODE" && v == "UNCHECKED_HASH")
                );
                // uv never compiles bytecode: the interpreter does, in its own step.
                assert!(!has("--compile-bytecode"), "{argv:?}");
                if step == BuildStep::Compile {
                    // No cache, no network, no uv; the interpreter without `site`.
                    assert_eq!(spec.network, Network::None);
                    assert!(!has("--index-url") && !has("--no-build"));
                    assert!(has("-I") && has("-S"), "{argv:?}");
                    assert!(has("/usr/bin/python3.11"));
                    assert_eq!(argv.last().unwrap(), "/var/lib/kakoi/envs/v1/abc/venv/lib");
                    continue;
                }
                assert!(has("--index-url"));
                assert!(has("https://mirror.invalid/simple"));
                assert_eq!(spec.network, Network::Host);
                assert!(
                    spec.env
                        .iter()
                        .any(|(k, v)| k == "UV_CACHE_DIR" && v == "/var/lib/kakoi/envs/uv-cache")
                );
                // Package code never runs while the shared cache is writable.
                assert_eq!(
                    has("--no-build"),
                    mode == CacheMode::Shared,
                    "{mode:?} {step:?}"
                );
                if step == BuildStep::Install {
                    assert!(has("--require-hashes"));
                    assert!(has("hardlink"));
                } else {
                    assert!(has("--generate-hashes"));
                    assert!(has("2025-06-01T00:00:00Z"));
                }
            }
        }
    }
}
