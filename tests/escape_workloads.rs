//! Real programs must still work under the default policy (seccomp allowlist + Landlock +
//! every other layer), run through the `kakoi` binary: CPython with threads, subprocess,
//! multiprocessing (fork, spawn, forkserver, Pool, shared memory, Manager), asyncio
//! (subprocesses, sockets on a socketpair, a unix server), sqlite3 (WAL), ssl (a TLS 1.3
//! handshake between two threads over a socketpair with a certificate made at test time),
//! hashlib/zlib/lzma/bz2, numpy and pandas; and `kakoi exec` of sh, cat, gcc and g++ compiling
//! and running programs inside the sandbox.
//!
//! The Python workloads are `tests/fixtures/escape/workloads.py`; each prints `<name> ok`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::attack::{self, Attack};
use kakoi::Status;

macro_rules! gate {
    () => {
        if !attack::available() {
            return;
        }
    };
}

fn workloads() -> PathBuf {
    common::fixture("escape/workloads.py")
}

/// `python3 /work/workloads.py NAME ARGS` with the workload copied in by `--file`.
fn python(name: &str, flags: &[&str], args: &[&str]) -> Attack {
    let file = format!("{}:workloads.py", workloads().display());
    let mut all = vec!["--file", file.as_str(), "--timeout", "60"];
    all.extend_from_slice(flags);
    let mut argv = vec!["python3", "/work/workloads.py", name];
    argv.extend_from_slice(args);
    let a = attack::run(name, &all, &argv);
    a.expect_status(Status::Ok);
    a
}

fn expect_ok_line(a: &Attack, name: &str) {
    assert!(
        a.result
            .stdout
            .lines()
            .any(|l| l == format!("{name} ok") || l.starts_with(&format!("{name} ok "))),
        "{name}: no `{name} ok` line\n{}",
        a.dump()
    );
}

#[test]
fn cpython_threads() {
    gate!();
    let a = python("threads", &[], &[]);
    expect_ok_line(&a, "threads");
}

#[test]
fn cpython_subprocess() {
    gate!();
    let a = python("subprocess", &[], &[]);
    expect_ok_line(&a, "subprocess");
}

#[test]
fn cpython_multiprocessing_fork_spawn_forkserver_pool() {
    gate!();
    let a = python("multiprocessing", &[], &[]);
    for method in ["fork", "spawn", "forkserver"] {
        assert!(
            a.result
                .stdout
                .contains(&format!("multiprocessing {method} ok")),
            "{method}\n{}",
            a.dump()
        );
    }
    expect_ok_line(&a, "multiprocessing");
}

#[test]
fn cpython_asyncio_subprocess_and_sockets() {
    gate!();
    let a = python("asyncio", &[], &[]);
    expect_ok_line(&a, "asyncio");
}

#[test]
fn cpython_sqlite3() {
    gate!();
    let a = python("sqlite3", &[], &[]);
    expect_ok_line(&a, "sqlite3");
}

#[test]
fn cpython_ssl_handshake_over_socketpair() {
    gate!();
    let dir = common::scratch();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-days",
            "2",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    let made = out.as_ref().is_ok_and(|o| o.status.success());
    if !common::require(
        "openssl",
        made,
        &format!("openssl could not make a test certificate: {out:?}"),
    ) {
        return;
    }
    let cert_flag = format!("{}:cert.pem", cert.display());
    let key_flag = format!("{}:key.pem", key.display());
    let a = python(
        "ssl",
        &["--file", &cert_flag, "--file", &key_flag],
        &["/work/cert.pem", "/work/key.pem"],
    );
    assert!(a.result.stdout.contains("ssl ok TLSv1.3"), "{}", a.dump());
}

#[test]
fn cpython_hashlib_zlib_lzma() {
    gate!();
    let a = python("hashlib", &[], &[]);
    expect_ok_line(&a, "hashlib");
}

#[test]
fn exec_sh_and_cat() {
    gate!();
    let a = attack::run(
        "sh and cat",
        &[],
        &[
            "sh",
            "-c",
            "printf 'a\\nb\\n' | cat | wc -l; echo text > /tmp/f && cat /tmp/f; cat /etc/passwd | grep -c sandbox",
        ],
    );
    a.expect_status(Status::Ok);
    assert_eq!(a.result.stdout, "2\ntext\n1\n", "{}", a.dump());
}

#[test]
fn exec_gcc_and_gxx_compile_and_run() {
    gate!();
    let dir = common::scratch();
    let cpp = dir.path().join("hello.cpp");
    std::fs::write(
        &cpp,
        "#include <iostream>\n#include <thread>\n#include <vector>\n#include <numeric>\n\
         int main() {\n  std::vector<int> v(1000);\n  std::iota(v.begin(), v.end(), 1);\n\
           long sum = 0;\n  std::thread t([&] { sum = std::accumulate(v.begin(), v.end(), 0L); });\n\
           t.join();\n  std::cout << \"hello c++ \" << sum << std::endl;\n}\n",
    )
    .unwrap();
    let c = dir.path().join("hello.c");
    std::fs::write(
        &c,
        "#include <stdio.h>\n#include <math.h>\nint main(void) { printf(\"hello c %.0f\\n\", sqrt(49.0)); return 0; }\n",
    )
    .unwrap();
    let cpp_flag = format!("{}:hello.cpp", cpp.display());
    let c_flag = format!("{}:hello.c", c.display());
    let script = "set -e\n\
        g++ -O1 -pthread -o /tmp/hello_cpp /work/hello.cpp && /tmp/hello_cpp\n\
        cd /work && gcc -O1 -o hello_c hello.c -lm && ./hello_c\n";
    let a = attack::run(
        "gcc and g++",
        &["--file", &cpp_flag, "--file", &c_flag, "--timeout", "120"],
        &["sh", "-c", script],
    );
    a.expect_status(Status::Ok);
    assert_eq!(
        a.result.stdout,
        "hello c++ 500500\nhello c 7\n",
        "{}",
        a.dump()
    );
}

/// numpy and pandas pinned, with everything they need (no dependency resolution at test time).
const SCIENTIFIC: &[&str] = &[
    "numpy==2.2.6",
    "pandas==2.2.3",
    "python-dateutil==2.9.0.post0",
    "pytz==2025.2",
    "tzdata==2025.2",
    "six==1.17.0",
];

/// numpy (OpenBLAS with 4 threads) and pandas under the policy, in an environment that
/// `kakoi run -r` builds (once per machine, in the data directory the environment tests share)
/// and mounts read-only.
#[test]
fn numpy_and_pandas() {
    gate!();
    if !common::pypi_available() {
        return;
    }
    let dir = common::scratch();
    let req = dir.path().join("requirements.txt");
    std::fs::write(&req, SCIENTIFIC.join("\n") + "\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kakoi"))
        .args([
            "run",
            "--json",
            "--quiet",
            "--timeout",
            "120",
            "--requirements",
        ])
        .arg(&req)
        .args(["--data-dir", common::SHARED_DATA_DIR])
        .args(["--env", "OPENBLAS_NUM_THREADS=4"])
        .arg(workloads())
        .arg("numpy-pandas")
        .output()
        .unwrap();
    let r = common::parse_result(&out);
    assert_eq!(r.status, Status::Ok, "{r:#?}");
    assert!(r.env.is_some(), "the run used the -r environment: {r:#?}");
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("numpy-pandas ok "))
        .unwrap_or_else(|| panic!("no result line: {r:#?}"));
    assert!(
        line.starts_with("numpy-pandas ok numpy 2.2.6 pandas 2.2.3 tasks "),
        "{line}"
    );
    // OpenBLAS caps its threads at the CPUs it may use (2 here): main + at least one worker.
    let tasks: u32 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(tasks >= 2, "OpenBLAS started no worker thread: {line}");
}
