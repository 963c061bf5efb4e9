//! Landlock, tested from inside: runs `examples/landlock_exec` (built by `cargo test`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};

mod common;

const PYTHON: &str = "/usr/bin/python3.11";

fn landlock_missing() -> Option<String> {
    match kakoi::sandbox::landlock::kernel_abi() {
        Ok(abi) if abi >= 1 => None,
        Ok(abi) => Some(format!("landlock ABI {abi}")),
        Err(errno) => Some(format!("landlock unavailable: {errno}")),
    }
}

/// Prints `SKIP: <reason>` (to the real stderr) and returns true, or panics when
/// `KAKOI_TEST_REQUIRE` names the capability: the suite's shared `common::require`.
fn skip(capability: &str, reason: Option<String>) -> bool {
    match reason {
        Some(reason) => !common::require(capability, false, &reason),
        None => false,
    }
}

fn helper() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let helper = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/landlock_exec");
    assert!(
        helper.exists(),
        "{} missing: run through cargo test",
        helper.display()
    );
    helper
}

/// Runs Python under a plan: read+exec on the system dirs, rw on `rw`, `/proc` read-only.
fn python_under_landlock(rw: &std::path::Path, code: &str) -> Output {
    let mut command = Command::new(helper());
    for ro in ["/usr", "/lib", "/lib64", "/bin", "/etc"] {
        if std::path::Path::new(ro).exists() {
            command.args(["--ro", ro]);
        }
    }
    command
        .args([
            "--ro-sandbox",
            "/proc",
            "--rw",
            "/dev/null",
            "--net-off",
            "--rw",
        ])
        .arg(rw)
        .args(["--", PYTHON, "-c", code]);
    let output = command.output().unwrap();
    eprintln!(
        "{:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

macro_rules! require_landlock {
    () => {
        if skip("landlock", landlock_missing()) {
            return;
        }
        if skip(
            "tools",
            (!std::path::Path::new(PYTHON).exists()).then(|| format!("{PYTHON} missing")),
        ) {
            return;
        }
    };
}

#[test]
fn writes_outside_allowed_paths_fail_with_eacces() {
    require_landlock!();
    let allowed = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let code = format!(
        r#"
import errno
open("{allowed}/ok.txt", "w").write("fine")
assert open("{allowed}/ok.txt").read() == "fine"
for target in ["{other}/nope.txt", "/etc/kakoi-landlock-test"]:
    try:
        open(target, "w")
        print("WROTE", target)
    except PermissionError as e:
        assert e.errno == errno.EACCES, e
print(open("/etc/passwd").read().count(":") > 0)
print(len(open("/proc/self/status").read()) > 0)
open("/dev/null", "w").write("x")
print("DONE")
"#,
        allowed = allowed.path().display(),
        other = other.path().display()
    );
    let output = python_under_landlock(allowed.path(), &code);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(!stdout.contains("WROTE"), "{stdout}");
    assert_eq!(stdout.trim(), "True\nTrue\nDONE");
    assert!(!other.path().join("nope.txt").exists());
}

#[test]
fn tcp_connect_to_host_listener_is_denied() {
    require_landlock!();
    if kakoi::sandbox::landlock::kernel_abi().unwrap() < 4 {
        skip("landlock", Some("landlock ABI < 4: no TCP rules".into()));
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let code = format!(
        r#"
import socket
s = socket.socket()
try:
    s.connect(("127.0.0.1", {port}))
    print("CONNECTED")
except PermissionError as e:
    print("DENIED", e.errno)
try:
    socket.socket().bind(("127.0.0.1", 0))
    print("BOUND")
except PermissionError as e:
    print("BIND DENIED", e.errno)
"#
    );
    let output = python_under_landlock(dir.path(), &code);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.trim(), "DENIED 13\nBIND DENIED 13");
}

#[test]
fn summary_reports_the_abi() {
    require_landlock!();
    let dir = tempfile::tempdir().unwrap();
    let output = python_under_landlock(dir.path(), "pass");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("LANDLOCK "))
        .expect("summary line");
    let summary: serde_json::Value = serde_json::from_str(line).unwrap();
    let kernel_abi = kakoi::sandbox::landlock::kernel_abi().unwrap();
    assert_eq!(summary["kernel_abi"], kernel_abi);
    assert_eq!(summary["abi"], kernel_abi.min(6));
    assert_eq!(summary["mode"], "strict");
    assert_ne!(summary["status"], "not_enforced");
    assert_eq!(summary["network"], kernel_abi >= 4);
    assert_eq!(summary["scoped"], kernel_abi >= 6);
}

#[test]
fn missing_sandbox_path_is_a_setup_error_in_strict_mode() {
    require_landlock!();
    let output = Command::new(helper())
        .args(["--rw", "/nonexistent/kakoi", "--", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&output.stderr).contains("rule for /nonexistent/kakoi"));
}
