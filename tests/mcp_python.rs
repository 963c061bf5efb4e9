//! The MCP server driven by the official Python SDK (`mcp` from PyPI, pinned), over both
//! transports and both ways of connecting (the initialize handshake, and the 2026-07-28
//! discover + per-request protocol). The client script is tests/fixtures/mcp/client.py; it
//! asserts each step and reports the steps it checked, which this test compares with the
//! full list so that no step can be skipped quietly.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The pinned SDK.
const MCP_SDK: &str = "mcp==2.3.0";

/// Gate + lock in one line at the top of every test.
macro_rules! setup {
    () => {{
        let guard = serial();
        if !sandbox_available() || !pypi_reachable() {
            return;
        }
        guard
    }};
}

/// Whether PyPI can be reached (the SDK is installed from it).
fn pypi_reachable() -> bool {
    use std::net::ToSocketAddrs as _;
    let reachable = ("pypi.org", 443)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(10)).is_ok());
    require(
        "pypi",
        reachable,
        "pypi.org:443 cannot be reached (the Python MCP SDK is installed from it)",
    )
}

/// The data directory the environment tests share (its toolchain has the pinned uv).
const DATA_DIR: &str = "/var/tmp/kakoi-test-env/shared";

/// A venv under target/ with the pinned SDK, made with the env toolchain's uv (installed once
/// per checkout; later runs reuse it).
fn python() -> PathBuf {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    static INSTALLING: Mutex<()> = Mutex::new(());
    READY
        .get_or_init(|| {
            let _one = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
            let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/test-tools")
                .join(MCP_SDK.replace("==", "-py-"));
            let python = venv.join("bin/python");
            let marker = venv.join(".kakoi-installed");
            if marker.is_file() {
                return python;
            }
            std::fs::create_dir_all(DATA_DIR).unwrap();
            let out = kakoi()
                .args(["env", "toolchain", "--json", "--data-dir", DATA_DIR])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "kakoi env toolchain: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
            let uv = PathBuf::from(doc["uv"]["path"].as_str().expect("the toolchain's uv"));
            let run = |args: &[&str]| {
                let out = Command::new(&uv)
                    .args(args)
                    .env("UV_CACHE_DIR", venv.parent().unwrap().join("uv-cache"))
                    .env("UV_PYTHON_DOWNLOADS", "never")
                    .env_remove("VIRTUAL_ENV")
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "uv {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            let _ = std::fs::remove_dir_all(&venv);
            run(&[
                "venv",
                "--python",
                "/usr/bin/python3",
                venv.to_str().unwrap(),
            ]);
            run(&[
                "pip",
                "install",
                "--python",
                python.to_str().unwrap(),
                MCP_SDK,
            ]);
            std::fs::write(&marker, MCP_SDK).unwrap();
            python
        })
        .clone()
}

fn script() -> PathBuf {
    fixture("mcp/client.py")
}

/// Run the client script; returns its report.
fn run_client(args: &[&str]) -> Value {
    let started = Instant::now();
    let out = Command::new(python())
        .arg(script())
        .args(args)
        .env("RUST_LOG", "info")
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .expect("run the Python MCP client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "client.py {args:?} failed ({:?}):\nstdout:\n{stdout}\nstderr (last 8000 chars):\n{}",
        out.status,
        tail(&stderr, 8000)
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no report on the last line ({e}):\n{stdout}"));
    eprintln!(
        "client.py {args:?}: {:.1} s, protocol {}, cancel → sandbox gone {} s",
        started.elapsed().as_secs_f64(),
        report["protocol_version"],
        report["cancel_to_gone_s"]
    );
    report
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The steps client.py checks, in order.
fn expected_checks(http: bool, commands: bool) -> Vec<&'static str> {
    let mut v = Vec::new();
    if http {
        v.extend([
            "auth required",
            "wrong token",
            "host rejected",
            "origin rejected",
            "loopback origin accepted",
            "sdk without token",
        ]);
    }
    v.extend([
        "initialize",
        "tools/list",
        "schemas",
        "success",
        "summary",
        "input files",
        "failing program",
        "failure summary",
        "timeout",
        "progress",
        "limit over the maximum",
        "unknown argument",
        if commands {
            "run_command"
        } else {
            "run_command refused"
        },
        "image result",
        "image bytes",
        "text resource",
        "list_envs",
        "cancellation",
        "after cancellation",
    ]);
    v
}

fn assert_report(report: &Value, http: bool, commands: bool, protocol: &str) {
    let checks: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(checks, expected_checks(http, commands), "{report:#}");
    assert_eq!(report["protocol_version"], protocol, "{report:#}");
}

fn config_file(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("kakoi.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

const CONFIG: &str = "workers = 2\n[max_limits]\ntimeout = 120\nmemory = \"1G\"\n";

#[test]
fn python_sdk_over_stdio_with_the_initialize_handshake() {
    let _g = setup!();
    let dir = scratch();
    let config = config_file(dir.path(), CONFIG);
    let report = run_client(&[
        "stdio",
        "--kakoi",
        env!("CARGO_BIN_EXE_kakoi"),
        "--config",
        config.to_str().unwrap(),
        "--mode",
        "legacy",
    ]);
    assert_report(&report, false, false, "2025-11-25");
}

#[test]
fn python_sdk_over_stdio_with_the_2026_protocol_and_commands() {
    let _g = setup!();
    let dir = scratch();
    let config = config_file(dir.path(), &format!("allow_commands = true\n{CONFIG}"));
    let report = run_client(&[
        "stdio",
        "--kakoi",
        env!("CARGO_BIN_EXE_kakoi"),
        "--config",
        config.to_str().unwrap(),
        "--mode",
        "auto",
        "--expect-commands",
    ]);
    assert_report(&report, false, true, "2026-07-28");
}

/// `kakoi serve` on a loopback port with a bearer token.
struct Serve {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

const TOKEN: &str = "python-sdk-token-0123456789";

impl Serve {
    fn start() -> Serve {
        let dir = scratch();
        let config = config_file(
            dir.path(),
            &format!("listen = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n{CONFIG}"),
        );
        let mut child = kakoi()
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env_remove("KAKOI_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("kakoi serve: listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("kakoi serve started");
        Serve {
            child,
            url: format!("{base}/mcp"),
            _dir: dir,
        }
    }

    fn launchers(&self) -> BTreeSet<u32> {
        let me = self.child.id().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                    s.rfind(')')
                        .and_then(|i| s[i + 2..].split_whitespace().nth(1).map(|p| p == me))
                        .unwrap_or(false)
                })
            })
            .collect()
    }

    fn stop(mut self) -> BTreeSet<u32> {
        let launchers = self.launchers();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "kakoi serve did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        launchers
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn assert_launchers_gone(launchers: &BTreeSet<u32>) {
    let uids: BTreeSet<u32> = launchers.iter().map(|p| host_uid_of_launcher(*p)).collect();
    let left = wait_gone(&uids, Duration::from_secs(10));
    assert!(left.is_empty(), "sandbox processes left: {left:?}");
    assert!(
        run_cgroups_of(launchers).is_empty(),
        "run cgroups left: {:?}",
        run_cgroups_of(launchers)
    );
}

#[test]
fn python_sdk_over_streamable_http_with_the_initialize_handshake() {
    let _g = setup!();
    let s = Serve::start();
    let url = s.url.clone();
    let report = run_client(&["http", "--url", &url, "--token", TOKEN, "--mode", "legacy"]);
    assert_report(&report, true, false, "2025-11-25");
    assert_launchers_gone(&s.stop());
}

#[test]
fn python_sdk_over_streamable_http_with_the_2026_protocol() {
    let _g = setup!();
    let s = Serve::start();
    let url = s.url.clone();
    let report = run_client(&["http", "--url", &url, "--token", TOKEN, "--mode", "auto"]);
    assert_report(&report, true, false, "2026-07-28");
    assert_launchers_gone(&s.stop());
}
