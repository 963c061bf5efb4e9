//! The default seccomp policy, tested from inside: real programs work, attacks are refused or
//! reported by name. Runs `examples/seccomp_exec` (built by `cargo test`).

use std::path::PathBuf;
use std::process::{Command, Output};

mod common;

const PYTHON: &str = "/usr/bin/python3.11";

/// Prints `SKIP: <reason>` (to the real stderr) and returns true, or panics when
/// `KAKOI_TEST_REQUIRE` names the capability: the suite's shared `common::require`.
fn skip(capability: &str, reason: Option<String>) -> bool {
    match reason {
        Some(reason) => !common::require(capability, false, &reason),
        None => false,
    }
}

fn seccomp_missing() -> Option<String> {
    let actions = std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail")
        .map_err(|e| format!("seccomp unavailable: /proc/sys/kernel/seccomp/actions_avail: {e}"))
        .ok()?;
    (!actions.contains("kill_process") || !actions.contains("user_notif")).then(|| {
        format!(
            "seccomp lacks kill_process/user_notif (have: {})",
            actions.trim()
        )
    })
}

fn unavailable(program: &str) -> Option<String> {
    (!std::path::Path::new(program).exists()).then(|| format!("{program} not installed"))
}

fn helper() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let helper = dir.join("examples").join("seccomp_exec");
    assert!(
        helper.exists(),
        "{} missing: run through cargo test",
        helper.display()
    );
    helper
}

fn run(args: &[&str]) -> Output {
    let output = Command::new(helper())
        .arg("--")
        .args(args)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    eprintln!(
        "{args:?}: {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn python(code: &str) -> Output {
    run(&[PYTHON, "-c", code])
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

macro_rules! require {
    ($($check:expr),*) => {
        if skip("seccomp", seccomp_missing()) { return; }
        $( if skip("tools", $check) { return; } )*
    };
}

#[test]
fn cpython_standard_library_works() {
    require!(unavailable(PYTHON));
    let output = python(
        r#"
import asyncio, multiprocessing, sqlite3, ssl, subprocess, threading
def square(x): return x * x
if __name__ == "__main__":
    results = []
    threads = [threading.Thread(target=results.append, args=(i,)) for i in range(4)]
    [t.start() for t in threads]; [t.join() for t in threads]
    assert sorted(results) == [0, 1, 2, 3]
    assert subprocess.run(["echo", "sub"], capture_output=True).stdout == b"sub\n"
    with multiprocessing.Pool(2) as pool:
        assert pool.map(square, [1, 2, 3]) == [1, 4, 9]
    async def main():
        await asyncio.sleep(0.01)
        return 7
    assert asyncio.run(main()) == 7
    db = sqlite3.connect(":memory:"); db.execute("create table t(a)"); db.execute("insert into t values (1)")
    assert db.execute("select count(*) from t").fetchone() == (1,)
    ssl.create_default_context()
    print("ALL OK")
"#,
    );
    assert!(output.status.success());
    assert!(stdout(&output).contains("ALL OK"));
}

#[test]
fn shell_and_coreutils_work() {
    require!(unavailable("/bin/sh"), unavailable("/bin/cat"));
    let output = run(&[
        "sh",
        "-c",
        "echo piped | cat | wc -l; cat /etc/hostname >/dev/null",
    ]);
    assert!(output.status.success());
    assert_eq!(stdout(&output).trim(), "1");
}

#[test]
fn gxx_compiles_and_runs_cpp() {
    require!(unavailable("/usr/bin/g++"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hello.cpp"),
        "#include <iostream>\nint main() { std::cout << \"hello c++\" << std::endl; }\n",
    )
    .unwrap();
    let script = format!(
        "cd {} && g++ -O1 -o hello hello.cpp && ./hello",
        dir.path().display()
    );
    let output = run(&["sh", "-c", &script]);
    assert!(output.status.success());
    assert_eq!(stdout(&output).trim(), "hello c++");
}

#[test]
fn unshare_is_stopped() {
    require!(unavailable("/usr/bin/unshare"));
    let output = run(&["unshare", "-U", "true"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("VIOLATION unshare"));
}

/// Python calling `syscall(nr, 0, ...)` through ctypes.
fn raw_syscall(nr: i64) -> Output {
    python(&format!(
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n\
         r = libc.syscall({nr}, 0, 0, 0, 0, 0)\nprint(r, os.strerror(ctypes.get_errno()))"
    ))
}

#[test]
fn attack_syscalls_are_reported_by_name() {
    require!(unavailable(PYTHON));
    for name in [
        "keyctl",
        "io_uring_setup",
        "bpf",
        "ptrace",
        "perf_event_open",
        "userfaultfd",
        "add_key",
        "process_vm_readv",
        "mount",
        "setns",
    ] {
        let nr = kakoi::sandbox::seccomp::syscall_number(name).unwrap();
        let output = raw_syscall(nr);
        assert!(!output.status.success(), "{name} was not stopped");
        assert!(
            stderr(&output).contains(&format!("VIOLATION {name}\n")),
            "{name} not reported"
        );
        assert!(stdout(&output).is_empty(), "{name} returned to the caller");
    }
}

#[test]
fn refused_calls_get_errno() {
    require!(unavailable(PYTHON));
    let clone = kakoi::sandbox::seccomp::syscall_number("clone").unwrap();
    let output = python(&format!(
        r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def errno_of(r): return "ok" if r >= 0 else os.strerror(ctypes.get_errno())
print("vsock", errno_of(libc.socket(40, 1, 0)))
print("packet", errno_of(libc.socket(17, 3, 0)))
print("raw", errno_of(libc.socket(2, 3, 1)))
print("netlink_audit", errno_of(libc.socket(16, 3, 9)))
print("netlink_route", errno_of(libc.socket(16, 3, 0)))
print("unix", errno_of(libc.socket(1, 1, 0)))
print("tcp", errno_of(libc.socket(2, 1, 0)))
print("clone3", errno_of(libc.syscall(435, 0, 0)))
print("nr460", errno_of(libc.syscall(460, 0, 0)))
print("nr999", errno_of(libc.syscall(999, 0, 0)))
print("clone_newuser", errno_of(libc.syscall({clone}, 0x10000000 | 17, 0, 0, 0, 0)))
print("personality", errno_of(libc.personality(0x0040000)))
print("personality_query", errno_of(libc.personality(0xffffffff)))
"#
    ));
    assert!(output.status.success());
    let text = stdout(&output);
    for (probe, expected) in [
        ("vsock", "Operation not permitted"),
        ("packet", "Operation not permitted"),
        ("raw", "Operation not permitted"),
        ("netlink_audit", "Operation not permitted"),
        ("netlink_route", "ok"),
        ("unix", "ok"),
        ("tcp", "ok"),
        ("clone3", "Function not implemented"),
        ("nr460", "Operation not permitted"),
        ("nr999", "Operation not permitted"),
        ("clone_newuser", "Operation not permitted"),
        ("personality", "Operation not permitted"),
        ("personality_query", "ok"),
    ] {
        assert!(
            text.lines().any(|l| l == format!("{probe} {expected}")),
            "{probe}: expected {expected} in\n{text}"
        );
    }
}

#[test]
#[cfg(target_arch = "x86_64")]
fn x32_syscall_kills_with_sigsys() {
    require!(unavailable(PYTHON));
    // getpid (39) with the x32 bit: the guard filter kills the process (SIGSYS = 31).
    let output = raw_syscall(0x4000_0000 | 39);
    assert_eq!(output.status.code(), Some(128 + 31));
    assert!(stdout(&output).is_empty());
}

#[test]
fn kill_process_fallback_still_stops_attacks() {
    require!(unavailable(PYTHON));
    let output = Command::new(helper())
        .args(["--no-notify", "--", PYTHON, "-c"])
        .arg("import ctypes; ctypes.CDLL(None).syscall(321, 0, 0, 0); print('survived')")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(128 + 31));
    assert!(stdout(&output).is_empty());
}

#[test]
fn runtime_policy_file_is_compiled_and_bad_files_are_clear_errors() {
    require!();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"allow": {"match_action": "allow", "mismatch_action": {"errno": 1}, "filter": [{"syscall": "reed", "comment": "typo"}]}}"#).unwrap();
    let output = Command::new(helper())
        .args(["--policy", bad.to_str().unwrap(), "--", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.contains(bad.to_str().unwrap()) && message.contains("reed"),
        "{message}"
    );

    let default = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("seccomp/{}/default.json", std::env::consts::ARCH));
    let output = Command::new(helper())
        .args([
            "--policy",
            default.to_str().unwrap(),
            "--",
            "/bin/echo",
            "from file",
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(stdout(&output).trim(), "from file");
}
