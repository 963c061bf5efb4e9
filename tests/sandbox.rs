//! Integration tests of the native sandbox, run against the `kakoi` binary as root.
//!
//! Every test takes one binary-wide lock (several count host-global things), checks its
//! capabilities with `common::sandbox_available()` (prints `SKIP:` or fails when
//! `KAKOI_TEST_REQUIRE` demands the capability) and asserts facts observed from inside the
//! sandbox (`tests/fixtures/probe.py`) or on the host (/proc, cgroupfs, mountinfo).

mod common;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use kakoi::{RunResult, Status};
use serde_json::Value;

/// Gate + lock in one line at the top of every test.
macro_rules! setup {
    () => {{
        let guard = serial();
        if !sandbox_available() {
            return;
        }
        guard
    }};
}

fn probe(extra_flags: &[&str], port: u16, host_paths: &[&str]) -> (Value, RunResult) {
    let probe = fixture("probe.py");
    let file_flag = format!("{}:probe.py", probe.display());
    let port = port.to_string();
    let mut flags = vec!["--file", file_flag.as_str()];
    flags.extend_from_slice(extra_flags);
    let mut cmd = vec!["python3", "/work/probe.py", port.as_str()];
    cmd.extend_from_slice(host_paths);
    let (r, _) = exec_json(&flags, &cmd);
    assert_eq!(r.status, Status::Ok, "probe failed: {r:#?}");
    let v: Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("probe printed no JSON ({e}): {}", r.stdout));
    (v, r)
}

// ---------------------------------------------------------------------------------------
// 1. The probe: what the payload sees from inside.
// ---------------------------------------------------------------------------------------

#[test]
fn probe_sees_an_isolated_unprivileged_world() {
    let _g = setup!();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let host_tmp_file = PathBuf::from("/tmp").join(unique("probe-visible"));
    std::fs::write(&host_tmp_file, "host secret").unwrap();
    let host_tmp = host_tmp_file.to_str().unwrap().to_owned();
    let invisible = [
        "/root",
        "/home",
        "/var",
        "/etc/shadow",
        "/etc/sudoers",
        "/run",
        "/run/kakoi",
        "/sys",
        "/boot",
        "/mnt",
        "/opt",
        "/srv",
        "/work/wt-itests",
        "/dev/sda",
        "/dev/kmsg",
        "/dev/mem",
        "/dev/pts",
        "/dev/tty",
        host_tmp.as_str(),
    ];
    let (p, r) = probe(&[], port, &invisible);
    std::fs::remove_file(&host_tmp_file).unwrap();
    drop(listener);

    // Identity: uid/gid 1000 everywhere, no supplementary groups.
    assert_eq!(p["uid"], 1000);
    assert_eq!(p["euid"], 1000);
    assert_eq!(p["gid"], 1000);
    assert_eq!(p["egid"], 1000);
    assert_eq!(p["status_uid"], serde_json::json!([1000, 1000, 1000, 1000]));
    assert_eq!(p["status_gid"], serde_json::json!([1000, 1000, 1000, 1000]));
    assert_eq!(p["groups"], serde_json::json!([]));
    // No capabilities in any set, no_new_privs.
    for set in ["cap_eff", "cap_prm", "cap_inh", "cap_bnd", "cap_amb"] {
        assert_eq!(p[set], "0000000000000000", "{set} is not empty: {}", p[set]);
    }
    assert_eq!(p["no_new_privs"], "1");
    // pid namespace: init is 1, the payload 2, nothing else is visible.
    assert_eq!(p["pids"], serde_json::json!([1, 2]), "foreign pids visible");
    assert_eq!(p["pid"], 2);
    assert_eq!(p["ppid"], 1);
    // uts namespace.
    assert_eq!(p["hostname"], "sandbox");
    assert_eq!(p["uname_nodename"], "sandbox");
    // Network: only lo, up (a local listener works), host loopback unreachable.
    assert_eq!(p["interfaces"], serde_json::json!(["lo"]));
    assert_eq!(
        p["loopback_works"], true,
        "lo is not up (UDP on 127.0.0.1 failed)"
    );
    // Landlock (ABI >= 4 on this kernel) refuses TCP bind when the network is off.
    assert_eq!(
        p["tcp_bind_loopback"], "EACCES",
        "TCP bind was not refused by Landlock"
    );
    assert!(
        !p["connect_host_port"].is_null(),
        "connect() to the host's 127.0.0.1:{port} succeeded from the sandbox"
    );
    // Writes outside /tmp and /work fail.
    for (path, outcome) in p["writes"].as_object().unwrap() {
        assert!(
            !outcome.is_null(),
            "write to {path} succeeded inside the sandbox"
        );
    }
    for (path, outcome) in p["mkdirs"].as_object().unwrap() {
        assert!(
            !outcome.is_null(),
            "mkdir {path} succeeded inside the sandbox"
        );
    }
    assert_eq!(p["writes"]["/usr"], "EROFS");
    assert_eq!(p["writes"]["/etc/passwd"], "EROFS");
    assert_eq!(p["writes"]["/"], "EROFS");
    for (path, outcome) in p["writable_ok"].as_object().unwrap() {
        assert!(outcome.is_null(), "{path} is not writable: {outcome}");
    }
    // Host files are invisible.
    for (path, seen) in p["visible"].as_object().unwrap() {
        assert_eq!(seen, false, "host path {path} is visible in the sandbox");
    }
    let root_entries: BTreeSet<&str> = p["root_entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // `.kakoi-scratch` holds what /tmp, /work and /dev/shm show; it is mode 0 (checked in
    // tests/core_api.rs).
    let allowed: BTreeSet<&str> = [
        ".kakoi-scratch",
        "bin",
        "dev",
        "etc",
        "lib",
        "lib32",
        "lib64",
        "libx32",
        "proc",
        "sbin",
        "tmp",
        "usr",
        "work",
    ]
    .into();
    assert!(
        root_entries.is_subset(&allowed),
        "unexpected entries in /: {root_entries:?}"
    );
    let dev: BTreeSet<&str> = p["dev_entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let expected_dev: BTreeSet<&str> = [
        "fd", "full", "null", "random", "shm", "stderr", "stdin", "stdout", "urandom", "zero",
    ]
    .into();
    assert_eq!(dev, expected_dev, "/dev is not minimal");
    // No controlling terminal.
    for fd in 0..3 {
        let v = &p["tty"][format!("ttyname_{fd}")];
        assert!(
            v.as_str().unwrap().starts_with("error"),
            "fd {fd} is a tty: {v}"
        );
    }
    assert!(
        p["tty"]["dev_tty"].as_str().unwrap().starts_with("error"),
        "/dev/tty opened"
    );
    // A new session led by init; the payload is in it.
    assert_eq!(p["sid"], 1);
    // The launcher's environment does not leak; only the small default set.
    let env: BTreeSet<&str> = p["environ"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let expected_env: BTreeSet<&str> = [
        "HOME", "HOSTNAME", "LANG", "LOGNAME", "PATH", "TMPDIR", "USER",
    ]
    .into();
    assert_eq!(env, expected_env);
    // No inherited fds beyond stdio (3 is the probe's own listdir fd).
    assert_eq!(p["fds"], serde_json::json!([0, 1, 2, 3]), "inherited fds");
    // init's environment (the launcher's) is not readable.
    assert!(
        p["proc1_environ"]
            .as_str()
            .is_some_and(|s| s.starts_with("error")),
        "/proc/1/environ is readable: {}",
        p["proc1_environ"]
    );
    assert_eq!(p["cwd"], "/work");
    assert_eq!(r.isolation.uid, 1000);
}

#[test]
fn probe_mounts_are_the_documented_layout() {
    let _g = setup!();
    let (p, _) = probe(&["--tmp-size", "8M"], 1, &[]);
    let mounts = p["mounts"].as_array().unwrap();
    let find = |mp: &str| {
        mounts
            .iter()
            .find(|m| m["mount_point"] == mp)
            .unwrap_or_else(|| panic!("no mount at {mp}: {mounts:#?}"))
    };
    let opts = |m: &Value| -> BTreeSet<String> {
        m["options"]
            .as_str()
            .unwrap()
            .split(',')
            .map(str::to_owned)
            .collect()
    };
    // Root (with /dev on it) and toolchain: read-only.
    for mp in ["/", "/usr"] {
        assert!(opts(find(mp)).contains("ro"), "{mp} is not read-only");
    }
    assert_eq!(p["writes"]["/dev"], "EROFS");
    for m in mounts {
        let mp = m["mount_point"].as_str().unwrap();
        if mp.starts_with("/etc/") || mp == "/usr" || mp.starts_with("/lib") || mp == "/bin" {
            assert!(opts(m).contains("ro"), "{mp} is writable: {m}");
            assert!(opts(m).contains("nosuid"), "{mp} allows suid: {m}");
        }
    }
    // Writable scratch space: writable views of the one root tmpfs, with its size cap.
    for mp in ["/tmp", "/work", "/dev/shm"] {
        let m = find(mp);
        assert_eq!(m["fstype"], "tmpfs");
        assert!(opts(m).contains("rw"), "{mp} is not writable");
        assert!(opts(m).contains("nosuid"));
        assert!(opts(m).contains("nodev"));
        assert!(
            m["super_options"].as_str().unwrap().contains("size=8192k"),
            "{mp} ignores --tmp-size 8M: {m}"
        );
        assert_eq!(m["super_options"], find("/")["super_options"]);
    }
    assert!(opts(find("/dev/shm")).contains("noexec"));
    let proc = find("/proc");
    assert_eq!(proc["fstype"], "proc");
    assert!(opts(proc).contains("nosuid") && opts(proc).contains("noexec"));
    // Every mount point is in the documented layout.
    for m in mounts {
        let mp = m["mount_point"].as_str().unwrap();
        let ok = ["/", "/usr", "/bin", "/sbin", "/proc", "/tmp", "/work"].contains(&mp)
            || mp.starts_with("/lib")
            || mp.starts_with("/etc/")
            || mp.starts_with("/dev");
        assert!(ok, "unexpected mount {mp}: {m}");
    }
    // /etc/passwd is generated, not the host's.
    let passwd = p["etc_passwd"].as_str().unwrap();
    assert!(passwd.contains("sandbox:x:1000:1000"), "{passwd}");
    assert_ne!(
        passwd,
        std::fs::read_to_string("/etc/passwd").unwrap(),
        "host /etc/passwd is visible"
    );
}

/// The init (pid 1) is a fork of the launcher and never execs, so its /proc/1/cmdline is
/// the launcher's full argv: host paths of --file/--bind-ro sources and --env values.
#[test]
fn init_cmdline_does_not_leak_the_launcher_argv() {
    let _g = setup!();
    let secret_path = fixture("probe.py");
    let (p, _) = probe(&["--env", "API_TOKEN=hunter2-secret"], 1, &[]);
    let cmdline = p["proc1_cmdline"].to_string();
    assert!(
        !cmdline.contains("hunter2-secret"),
        "/proc/1/cmdline shows an --env value to the payload: {cmdline}"
    );
    assert!(
        !cmdline.contains(secret_path.to_str().unwrap()),
        "/proc/1/cmdline shows host paths to the payload: {cmdline}"
    );
}

// ---------------------------------------------------------------------------------------
// 2. Limits.
// ---------------------------------------------------------------------------------------

#[test]
fn memory_hog_is_oom_killed() {
    let _g = setup!();
    let (r, _) = exec_json(
        &["--memory", "64M", "--timeout", "20"],
        &[
            "python3",
            "-c",
            "x = b'x' * (200 << 20)\nprint('survived', len(x))",
        ],
    );
    assert_eq!(r.status, Status::Oom, "{r:#?}");
    assert!(r.oom_killed);
    assert!(!r.stdout.contains("survived"));
    assert_eq!(r.signal, Some(libc::SIGKILL));
    let peak = r.peak_memory_bytes.expect("peak memory");
    assert!(
        peak <= 64 << 20 && peak > 32 << 20,
        "peak {peak} not near the 64M limit"
    );
    assert!(wait_gone(&uid_set(&r), Duration::from_secs(2)).is_empty());
}

fn uid_set(r: &RunResult) -> BTreeSet<u32> {
    assert!(r.isolation.host_uid >= HOST_ID_BASE, "{:?}", r.isolation);
    [r.isolation.host_uid].into()
}

/// Spawn `kakoi exec --json <args>`, sample the host's live processes of its sandbox uid
/// until they are all gone; returns the result and the peak count.
fn run_sampling(args: &[&str]) -> (RunResult, usize) {
    let child = kakoi()
        .args(["exec", "--json"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let uid: BTreeSet<u32> = [host_uid_of_launcher(child.id())].into();
    let started = Instant::now();
    let mut peak = 0;
    // The pipes are small and the output is too, so the child cannot block on them while
    // we poll /proc instead of waiting.
    loop {
        let n = processes_of(&uid).len();
        peak = peak.max(n);
        if n == 0 && started.elapsed() > Duration::from_millis(300) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "run did not end within 20 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    let r = parse_result(&out);
    assert_eq!(r.isolation.host_uid, *uid.first().unwrap());
    (r, peak)
}

#[test]
fn fork_bomb_is_contained_by_pids() {
    let _g = setup!();
    // The classic bomb: contained, ended by the wall clock, nothing survives.
    let (r, peak) = run_sampling(&[
        "--pids",
        "32",
        "--timeout",
        "2",
        "--",
        "sh",
        "-c",
        "b() { b | b & }; b; sleep 5",
    ]);
    assert!(
        peak <= 32,
        "{peak} sandbox processes on the host, pids limit is 32"
    );
    assert!(
        r.status != Status::Ok || r.stderr.contains("fork"),
        "fork bomb not contained: {r:#?}"
    );
    assert!(wait_gone(&uid_set(&r), Duration::from_secs(2)).is_empty());

    // A deterministic fill: fork until the kernel refuses, hold the children while the
    // host counts them. fork() must fail at the pids limit (init + payload + children).
    let script = r#"
import os, time
n = 0
while True:
    try:
        pid = os.fork()
    except OSError as e:
        print("fork failed after %d children: %s" % (n, e.strerror), flush=True)
        break
    if pid == 0:
        time.sleep(100)
        os._exit(0)
    n += 1
time.sleep(0.5)
"#;
    let (r, peak) = run_sampling(&["--pids", "32", "--", "python3", "-c", script]);
    assert_eq!(r.status, Status::Ok, "{r:#?}");
    assert!(
        r.stdout.starts_with("fork failed after 30 children"),
        "{:?}",
        r.stdout
    );
    assert!((30..=32).contains(&peak), "peak {peak} sandbox processes");
    assert!(wait_gone(&uid_set(&r), Duration::from_secs(2)).is_empty());
}

#[test]
fn infinite_loop_times_out_and_every_process_dies() {
    let _g = setup!();
    let (r, _) = exec_json(
        &["--timeout", "1"],
        &[
            "sh",
            "-c",
            "sleep 1000 & (while :; do :; done) & while :; do :; done",
        ],
    );
    assert_eq!(r.status, Status::Timeout, "{r:#?}");
    assert!(
        (900.0..3000.0).contains(&r.wall_ms),
        "wall_ms {} not about 1000",
        r.wall_ms
    );
    let left = wait_gone(&uid_set(&r), Duration::from_millis(500));
    assert!(left.is_empty(), "processes survived the timeout: {left:?}");
    // Without --json: exit 124.
    let out = kakoi_output(&["exec", "--timeout", "0.2", "--", "sleep", "10"]);
    assert_eq!(out.status.code(), Some(124), "{out:?}");
}

#[test]
fn stdout_and_stderr_floods_are_capped_exactly() {
    let _g = setup!();
    for (stream, redirect) in [("stdout", ""), ("stderr", " >&2")] {
        let script = format!("head -c 5000000 /dev/zero | tr '\\0' a{redirect}; echo done >&2");
        let (r, _) = exec_json(&["--output-limit", "10000"], &["sh", "-c", &script]);
        assert_eq!(r.status, Status::OutputLimit, "{stream}: {r:#?}");
        let (kept, truncated, other_truncated) = if stream == "stdout" {
            (r.stdout_bytes(), r.stdout_truncated, r.stderr_truncated)
        } else {
            (r.stderr_bytes(), r.stderr_truncated, r.stdout_truncated)
        };
        assert!(truncated, "{stream} not flagged");
        assert!(!other_truncated, "the other stream flagged too");
        assert_eq!(kept.len(), 10000, "{stream} kept {} bytes", kept.len());
        assert!(kept.iter().all(|&b| b == b'a'));
        // The payload was not blocked: it ran to completion (its final line on stderr is
        // lost only when stderr itself is the flooded stream).
        if stream == "stdout" {
            assert_eq!(r.stderr, "done\n");
            assert_eq!(r.exit_code, Some(0));
        }
    }
    // An endless flood does not block the payload against a full pipe: it ends by timeout,
    // with exactly the cap kept.
    let (r, _) = exec_json(
        &["--output-limit", "4096", "--timeout", "1"],
        &["sh", "-c", "cat /dev/zero"],
    );
    assert_eq!(r.stdout_bytes().len(), 4096);
    assert!(r.stdout_truncated);
    assert_eq!(r.status, Status::Timeout, "{r:#?}");
}

#[test]
fn sleeping_grandchild_is_killed_when_the_payload_exits() {
    let _g = setup!();
    let started = Instant::now();
    let (r, _) = exec_json(&[], &["sh", "-c", "sleep 1000 & exit 0"]);
    assert_eq!(r.status, Status::Ok, "{r:#?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited for the grandchild"
    );
    let left = wait_gone(&uid_set(&r), Duration::from_millis(500));
    assert!(left.is_empty(), "grandchild survived: {left:?}");
}

#[test]
fn init_reaps_orphaned_zombies() {
    let _g = setup!();
    let script = r#"
import json, os, time
N = 5
for i in range(N):
    pid = os.fork()
    if pid == 0:
        if os.fork() == 0:
            # grandchild: orphaned once its parent exits; record who adopted it, then exit
            time.sleep(0.1)
            with open("/tmp/orphan-%d" % os.getpid(), "w") as f:
                f.write(str(os.getppid()))
            os._exit(0)
        os._exit(0)
    os.waitpid(pid, 0)
time.sleep(0.5)
states = {}
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            with open("/proc/%s/stat" % p) as f:
                states[p] = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            pass
adopters = []
for name in os.listdir("/tmp"):
    if name.startswith("orphan-"):
        with open("/tmp/" + name) as f:
            adopters.append(int(f.read()))
print(json.dumps({"states": states, "adopters": adopters}))
"#;
    let (r, _) = exec_json(&[], &["python3", "-c", script]);
    assert_eq!(r.status, Status::Ok, "{r:#?}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        v["adopters"],
        serde_json::json!([1, 1, 1, 1, 1]),
        "orphans were not adopted by init: {v}"
    );
    let zombies: Vec<_> = v["states"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, s)| *s == "Z")
        .collect();
    assert!(zombies.is_empty(), "unreaped zombies: {zombies:?}");
}

#[test]
fn cpu_time_limit_reports_cpu_timeout() {
    let _g = setup!();
    let (r, _) = exec_json(
        &["--cpu-time", "1", "--timeout", "10"],
        &["python3", "-c", "while True: pass"],
    );
    assert_eq!(r.status, Status::CpuTimeout, "{r:#?}");
    assert_eq!(r.signal, Some(libc::SIGXCPU));
    // RLIMIT_CPU fires at 1 s of CPU time; the cgroup's cpuacct.usage counts it exactly (the
    // tick-sampled user/sys split and the init's rusage both undercount on a loaded VM).
    assert!(
        r.cpu_user_ms + r.cpu_sys_ms >= 950.0,
        "cpu {} + {}",
        r.cpu_user_ms,
        r.cpu_sys_ms
    );
    assert!(r.wall_ms < 5000.0);
}

#[test]
fn exit_code_and_signal_pass_through() {
    let _g = setup!();
    let (r, out) = exec_json(&[], &["sh", "-c", "exit 3"]);
    assert_eq!(r.status, Status::RuntimeError);
    assert_eq!(r.exit_code, Some(3));
    assert_eq!(r.signal, None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "--json exits 0 unless setup failed"
    );
    let out = kakoi_output(&["exec", "--", "sh", "-c", "echo hi; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"hi\n");
    assert_eq!(out.stderr, b"err\n");

    let (r, _) = exec_json(&[], &["sh", "-c", "kill -SEGV $$"]);
    assert_eq!(r.status, Status::Signaled, "{r:#?}");
    assert_eq!(r.signal, Some(11));
    assert_eq!(r.signal_name.as_deref(), Some("SIGSEGV"));
    assert_eq!(r.exit_code, None);
    let out = kakoi_output(&["exec", "--", "sh", "-c", "kill -SEGV $$"]);
    assert_eq!(out.status.code(), Some(128 + 11));
    assert_eq!(
        out.status.signal(),
        None,
        "kakoi itself must not die of the signal"
    );

    let (r, _) = exec_json(&[], &["true"]);
    assert_eq!(r.status, Status::Ok);
    assert_eq!(r.exit_code, Some(0));
}

// ---------------------------------------------------------------------------------------
// 3. Bad input and setup failures.
// ---------------------------------------------------------------------------------------

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_input_is_refused_with_a_clear_message() {
    let _g = setup!();
    let cases: &[(&[&str], &str)] = &[
        (
            &["exec", "--json", "--", "no-such-command-kakoi"],
            "no-such-command-kakoi",
        ),
        (
            &[
                "exec",
                "--json",
                "--file",
                "/etc/hostname:../x",
                "--",
                "true",
            ],
            "../x",
        ),
        (
            &[
                "exec",
                "--json",
                "--file",
                "/etc/hostname:/abs",
                "--",
                "true",
            ],
            "/abs",
        ),
        (&["exec", "--json", "--memory", "1", "--", "true"], "memory"),
        (
            &["exec", "--json", "--timeout", "0", "--", "true"],
            "timeout",
        ),
        (&["exec", "--json", "--pids", "0", "--", "true"], "pids"),
        (
            &["exec", "--json", "--network", "host", "--", "true"],
            "--i-understand-host-network",
        ),
        (
            &["exec", "--json", "--env", "NOEQUALS", "--", "true"],
            "NOEQUALS",
        ),
        (
            &[
                "exec",
                "--json",
                "--file",
                "/nonexistent/input",
                "--",
                "true",
            ],
            "/nonexistent/input",
        ),
        (
            &["exec", "--json", "--bind-ro", "/etc:/proc/x", "--", "true"],
            "/proc/x",
        ),
        (
            &[
                "exec",
                "--json",
                "--bind-ro",
                "/nonexistent:/opt/x",
                "--",
                "true",
            ],
            "/nonexistent",
        ),
        (
            &["run", "--json", "/nonexistent/main.py"],
            "/nonexistent/main.py",
        ),
    ];
    for (args, needle) in cases {
        let out = kakoi_output(args);
        let stderr = stderr_of(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_ne!(out.status.code(), None, "{args:?} died of a signal");
        assert!(
            stderr.contains(needle),
            "{args:?}: message does not name {needle:?}: {stderr}"
        );
        assert!(stderr.contains("error"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        assert!(out.stdout.is_empty() || parse_result(&out).status == Status::SetupError);
    }
    // Range errors say which limit and the accepted range.
    let out = kakoi_output(&["exec", "--memory", "1", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr_of(&out).contains("out of range"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn exec_failure_reports_stage_and_errno() {
    let _g = setup!();
    let dir = scratch();
    let file = dir.path().join("file.txt");
    std::fs::write(&file, "not a program\n").unwrap();
    let flag = format!("{}:file.txt", file.display());
    let (r, out) = exec_json(&["--file", &flag], &["/work/file.txt"]);
    assert_eq!(r.status, Status::SetupError, "{r:#?}");
    assert_eq!(out.status.code(), Some(125));
    let e = r.error.as_ref().expect("error object");
    assert_eq!(e.stage, "exec");
    assert_eq!(e.errno_name, "EACCES");
    assert_eq!(e.errno, libc::EACCES);
    assert!(e.message.contains("/work/file.txt"), "{}", e.message);
    assert_eq!(r.exit_code, None);
    // Without --json: 125 and the message on stderr.
    let out = kakoi_output(&["exec", "--file", &flag, "--", "/work/file.txt"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr_of(&out).contains("EACCES"), "{}", stderr_of(&out));

    // A program missing inside the sandbox: ENOENT at exec, with a hint.
    let (r, _) = exec_json(&[], &["/work/missing"]);
    let e = r.error.expect("error object");
    assert_eq!(
        (e.stage.as_str(), e.errno_name.as_str()),
        ("exec", "ENOENT")
    );
    assert!(e.hint.is_some());
}

#[test]
fn bind_failure_reports_the_rootfs_step() {
    let _g = setup!();
    // A bind target under the toolchain is refused before anything starts.
    let out = kakoi_output(&[
        "exec",
        "--json",
        "--bind-ro",
        "/etc/hostname:/bin/kakoi-x",
        "--",
        "true",
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reserved"),
        "{out:?}"
    );
    // A bind source the sandbox's unprivileged host uid cannot reach (a mode-0700
    // directory owned by root) fails in the child's rootfs step, reported with its errno.
    let private = std::env::temp_dir().join(format!("kakoi-private-{}", std::process::id()));
    std::fs::create_dir_all(private.join("inner")).unwrap();
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let bind = format!("{}:/opt/private", private.join("inner").display());
    let (r, out) = exec_json(&["--bind-ro", &bind], &["true"]);
    std::fs::remove_dir_all(&private).unwrap();
    assert_eq!(r.status, Status::SetupError, "{r:#?}");
    assert_eq!(out.status.code(), Some(125));
    let e = r.error.expect("error object");
    assert_eq!(e.stage, "rootfs");
    assert_eq!(e.errno_name, "EACCES", "{e:?}");
    assert!(e.detail.is_some_and(|d| d.contains("/opt/private")));
    // A bind to a fresh directory works and is read-only.
    let (r, _) = exec_json(
        &["--bind-ro", "/etc/hostname:/opt/host-hostname"],
        &[
            "sh",
            "-c",
            "cat /opt/host-hostname; echo x > /opt/host-hostname && echo WRITABLE",
        ],
    );
    assert_eq!(r.stdout, std::fs::read_to_string("/etc/hostname").unwrap());
    assert!(r.stderr.contains("Read-only"), "{r:#?}");
}

#[test]
fn writable_bind_reaches_the_host_and_nothing_else_does() {
    let _g = setup!();
    let dir = tempfile::Builder::new()
        .prefix("kakoi-rw-")
        .tempdir()
        .unwrap();
    // The sandbox user is an unprivileged host id: let it write here.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let bind = format!("{}:/opt/out", dir.path().display());
    let (r, _) = exec_json(
        &["--bind-rw", &bind],
        &[
            "sh",
            "-c",
            "mkdir /opt/out/sub && echo hello > /opt/out/sub/f && cat /opt/out/sub/f; \
             echo x > /opt/escape 2>/dev/null || echo refused",
        ],
    );
    assert_eq!(r.status, Status::Ok, "{r:#?}");
    assert_eq!(r.stdout, "hello\nrefused\n");
    let written = dir.path().join("sub/f");
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "hello\n");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&written).unwrap());
    assert_eq!(
        owner, r.isolation.host_uid,
        "written as the sandbox's host id"
    );
    // A writable bind over a reserved path is refused before anything starts.
    let out = kakoi_output(&["exec", "--bind-rw", "/tmp:/usr/x", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr_of(&out).contains("reserved"), "{out:?}");
    // Two binds on one target are refused.
    let out = kakoi_output(&[
        "exec",
        "--bind-ro",
        "/etc/hostname:/opt/a",
        "--bind-rw",
        &format!("{}:/opt/a", dir.path().display()),
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr_of(&out).contains("two binds"), "{out:?}");
}

// ---------------------------------------------------------------------------------------
// 4. Output encoding.
// ---------------------------------------------------------------------------------------

#[test]
fn non_utf8_output_is_kept_exactly() {
    let _g = setup!();
    let (r, _) = exec_json(&[], &["sh", "-c", r"printf '\377\376'; printf '\377x' >&2"]);
    assert_eq!(r.status, Status::Ok);
    assert!(r.stdout_base64.is_some(), "{r:#?}");
    assert_eq!(r.stdout_bytes(), b"\xff\xfe");
    assert_eq!(r.stderr_bytes(), b"\xffx");
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(r.stdout_base64.unwrap())
        .unwrap();
    assert_eq!(raw, b"\xff\xfe");
    // Passthrough without --json is byte-exact too.
    let out = kakoi_output(&["exec", "--", "sh", "-c", r"printf '\377\376\000z'"]);
    assert_eq!(out.stdout, b"\xff\xfe\x00z");
}

// ---------------------------------------------------------------------------------------
// 5. Inputs.
// ---------------------------------------------------------------------------------------

#[test]
fn stdin_env_files_and_run_args_reach_the_payload() {
    let _g = setup!();
    let dir = scratch();
    let stdin = dir.path().join("in.txt");
    std::fs::write(&stdin, "line one\nline two\n").unwrap();
    let csv = dir.path().join("x.csv");
    std::fs::write(&csv, "a,b\n1,2\n").unwrap();
    let stdin_s = stdin.to_str().unwrap();
    let file_flag = format!("{}:data/x.csv", csv.display());
    let (r, _) = exec_json(
        &[
            "--stdin",
            stdin_s,
            "--env",
            "GREETING=hello world",
            "--env",
            "EMPTY=",
            "--file",
            &file_flag,
        ],
        &[
            "sh",
            "-c",
            "cat; echo \"$GREETING|${EMPTY-unset}\"; stat -c '%u %g %a' /work/data /work/data/x.csv; cat /work/data/x.csv",
        ],
    );
    assert_eq!(r.status, Status::Ok, "{r:#?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0..2], ["line one", "line two"]);
    assert_eq!(lines[2], "hello world|");
    assert!(lines[3].starts_with("1000 1000 "), "data dir: {}", lines[3]);
    let csv_stat: Vec<&str> = lines[4].split(' ').collect();
    assert_eq!(
        csv_stat[0..2],
        ["1000", "1000"],
        "x.csv owner: {}",
        lines[4]
    );
    let mode = u32::from_str_radix(csv_stat[2], 8).unwrap();
    assert!(mode & 0o400 != 0, "x.csv not readable: {mode:o}");
    assert_eq!(lines[5..], ["a,b", "1,2"]);

    // Default stdin is /dev/null (EOF at once, not the test's stdin).
    let (r, _) = exec_json(&[], &["sh", "-c", "cat; echo eof"]);
    assert_eq!(r.stdout, "eof\n");

    // kakoi run main.py a b
    let main = dir.path().join("main.py");
    std::fs::write(
        &main,
        "import sys, os\nprint(repr(sys.argv[1:]), os.getcwd(), sys.argv[0])\n",
    )
    .unwrap();
    let out = kakoi_output(&[
        "run",
        "--json",
        main.to_str().unwrap(),
        "a",
        "b c",
        "--not-a-flag",
    ]);
    let r = parse_result(&out);
    assert_eq!(r.status, Status::Ok, "{r:#?}");
    assert_eq!(
        r.stdout,
        "['a', 'b c', '--not-a-flag'] /work /work/main.py\n"
    );
    let out = kakoi_output(&["run", main.to_str().unwrap(), "x"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"['x'] /work /work/main.py\n");
}

// ---------------------------------------------------------------------------------------
// 6. Nothing left behind.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Kind {
    Ok,
    Crash,
    Timeout,
    Oom,
    SetupFailure,
}

fn mixed_run(kind: Kind) -> (u32, RunResult) {
    let (flags, cmd, expected): (&[&str], &[&str], Status) = match kind {
        Kind::Ok => (&[], &["true"], Status::Ok),
        Kind::Crash => (&[], &["sh", "-c", "kill -SEGV $$"], Status::Signaled),
        Kind::Timeout => (&["--timeout", "0.05"], &["sleep", "10"], Status::Timeout),
        Kind::Oom => (
            &["--memory", "16M"],
            &["python3", "-c", "x = b'x' * (64 << 20)"],
            Status::Oom,
        ),
        Kind::SetupFailure => (&[], &["/work/missing"], Status::SetupError),
    };
    let child = kakoi()
        .args(["exec", "--json"])
        .args(flags)
        .arg("--")
        .args(cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kakoi");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let r = parse_result(&out);
    assert_eq!(r.status, expected, "{kind:?}: {r:#?}");
    (pid, r)
}

#[test]
fn nothing_is_left_behind_after_many_runs() {
    let _g = setup!();
    const RUNS: usize = 500;
    const THREADS: usize = 8;
    // One warm-up run creates the runtime directory and cgroup bases.
    mixed_run(Kind::Ok);
    let before = leftovers();
    let started = Instant::now();
    let kinds = [
        Kind::Ok,
        Kind::Ok,
        Kind::Crash,
        Kind::Timeout,
        Kind::Ok,
        Kind::Oom,
        Kind::SetupFailure,
        Kind::Crash,
    ];
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                (t..RUNS)
                    .step_by(THREADS)
                    .map(|i| mixed_run(kinds[i % kinds.len()]))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<(u32, RunResult)> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("run thread"))
        .collect();
    assert_eq!(results.len(), RUNS);
    let elapsed = started.elapsed();
    let launchers: BTreeSet<u32> = results.iter().map(|(pid, _)| *pid).collect();
    let uids: BTreeSet<u32> = results.iter().map(|(_, r)| r.isolation.host_uid).collect();
    for (pid, r) in &results {
        assert_eq!(r.isolation.host_uid, host_uid_of_launcher(*pid));
    }

    let left = wait_gone(&uids, Duration::from_secs(2));
    assert!(left.is_empty(), "sandbox processes left: {left:?}");
    assert_eq!(
        run_cgroups_of(&launchers),
        Vec::<PathBuf>::new(),
        "cgroups left"
    );
    // Host-wide state. Other kakoi users on the machine may add and remove their own
    // processes and cgroups meanwhile (those are checked above for our launchers only), so
    // here only what appeared and stayed counts.
    let after = leftovers();
    let added = |a: &BTreeSet<PathBuf>, b: &BTreeSet<PathBuf>| -> Vec<PathBuf> {
        a.difference(b).cloned().collect()
    };
    // Docker (another engineer's tests on this host) mounts container filesystems and
    // network namespaces meanwhile; those are not kakoi's.
    let docker = |m: &String| m.contains(" /var/lib/docker/") || m.contains(" /run/docker/");
    let new_mounts: Vec<&String> = after
        .mounts
        .iter()
        .filter(|m| !before.mounts.contains(m) && !docker(m))
        .collect();
    assert!(
        new_mounts.is_empty(),
        "host mounts appeared: {new_mounts:?}"
    );
    assert_eq!(
        added(&after.runtime_entries, &before.runtime_entries),
        Vec::<PathBuf>::new(),
        "entries appeared under /run/kakoi"
    );
    assert_eq!(
        added(&after.tmp_entries, &before.tmp_entries),
        Vec::<PathBuf>::new(),
        "/tmp/kakoi* entries appeared"
    );
    assert_eq!(after.fds, before.fds, "the test process leaked fds");
    eprintln!("{RUNS} runs in {elapsed:?}");
}

#[test]
fn killed_runner_leaves_nothing_behind() {
    let _g = setup!();
    let mut child = kakoi()
        .args([
            "exec",
            "--timeout",
            "100",
            "--",
            "sh",
            "-c",
            "sleep 1000 & sleep 1000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let launcher = child.id();
    let uid: BTreeSet<u32> = [host_uid_of_launcher(launcher)].into();
    let deadline = Instant::now() + Duration::from_secs(5);
    while processes_of(&uid).len() < 3 {
        assert!(Instant::now() < deadline, "the sandbox never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let launchers: BTreeSet<u32> = [launcher].into();
    assert!(
        !run_cgroups_of(&launchers).is_empty(),
        "no run cgroup while running (cannot check the stale sweep)"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let left = wait_gone(&uid, Duration::from_secs(2));
    assert!(
        left.is_empty(),
        "sandbox outlived its killed runner: {left:?}"
    );
    // The next kakoi sweeps the dead runner's cgroup.
    let (r, _) = exec_json(&[], &["true"]);
    assert_eq!(r.status, Status::Ok);
    assert_eq!(
        run_cgroups_of(&launchers),
        Vec::<PathBuf>::new(),
        "stale cgroup of the killed runner was not removed"
    );
}

// ---------------------------------------------------------------------------------------
// 8. The result's metadata.
// ---------------------------------------------------------------------------------------

#[test]
fn timings_and_isolation_are_reported() {
    let _g = setup!();
    let (r, _) = exec_json(&[], &["python3", "-c", "sum(range(10**6))"]);
    assert_eq!(r.status, Status::Ok, "{r:#?}");
    assert!(r.timings.setup_ms > 0.0, "{:?}", r.timings);
    assert!(r.timings.setup_ms < 2000.0, "{:?}", r.timings);
    assert!(r.wall_ms > 0.0);
    assert!((r.timings.run_ms - r.wall_ms).abs() < 1.0);
    assert!(r.timings.cleanup_ms >= 0.0);
    assert!(r.cpu_user_ms >= 0.0 && r.cpu_sys_ms >= 0.0);
    assert!(r.cpu_user_ms + r.cpu_sys_ms > 0.0, "no cpu accounted");
    assert!(r.peak_memory_bytes.is_some_and(|b| b > 1 << 20));
    let i = &r.isolation;
    let ns: BTreeSet<&str> = i.namespaces.iter().map(String::as_str).collect();
    assert_eq!(
        ns,
        ["user", "pid", "net", "mount", "ipc", "uts", "cgroup"].into()
    );
    assert_eq!(i.namespaces.len(), 7);
    assert_eq!((i.uid, i.gid), (1000, 1000));
    assert!(i.host_uid >= HOST_ID_BASE);
    assert!(i.capabilities.is_empty());
    assert!(i.no_new_privs);
    assert_eq!(i.network, "none");
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        && !Path::new("/sys/fs/cgroup/memory").exists();
    assert_eq!(i.cgroup.version, if v2 { "v2" } else { "v1" });
    // v2: born in the cgroup; v1: the child moved itself in through the launcher's `tasks`
    // fds (no global lock), which the peak memory above, read from that cgroup, confirms.
    assert_eq!(
        i.cgroup.attach.as_deref(),
        Some(if v2 { "clone_into" } else { "move_self" })
    );
    for c in ["memory", "pids", "cpu"] {
        assert!(
            i.cgroup.controllers.iter().any(|x| x == c),
            "{:?}",
            i.cgroup
        );
    }
    assert!(i.rlimit_fallbacks.is_empty());
    let rl = |name: &str| i.rlimits.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    assert_eq!(rl("core"), Some(0));
    assert_eq!(rl("nofile"), Some(256));
    assert_eq!(rl("fsize"), Some(64 << 20));
    // The rlimits are really in force inside.
    let (r, _) = exec_json(&[], &["sh", "-c", "ulimit -c; ulimit -n"]);
    assert_eq!(r.stdout, "0\n256\n");
}

// ---------------------------------------------------------------------------------------
// 9. The library API through examples/embed.rs.
// ---------------------------------------------------------------------------------------

fn embed_example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/sandbox-<hash> → target/debug/examples/embed
    let path = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples/embed");
    assert!(
        path.is_file(),
        "{} is missing; `cargo test` builds examples (do not pass --test alone)",
        path.display()
    );
    path
}

#[test]
fn embed_example_runs_and_leaks_no_fds() {
    let _g = setup!();
    let out = std::process::Command::new(embed_example())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let r: RunResult = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r.status, Status::Ok, "{r:#?}");
    assert_eq!(r.stdout, "42\n");

    let started = Instant::now();
    let out = std::process::Command::new(embed_example())
        .args(["--leak-check", "100"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["runs"], 100);
    assert_eq!(v["ok"], 100, "{v}");
    assert!(v["fds_before"].as_u64().unwrap() >= 3);
    assert_eq!(
        v["fds_before"], v["fds_after"],
        "fd leak in the library: {v}"
    );
    assert_eq!(v["children_left"], 0, "{v}");
    eprintln!("100 in-process runs in {:?}", started.elapsed());
    // Everything the embedder's runs created is gone.
    let mut stderr = std::io::stderr();
    writeln!(stderr, "{}", String::from_utf8_lossy(&out.stderr)).unwrap();
}
