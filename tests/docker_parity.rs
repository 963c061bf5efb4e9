//! Parity of the Docker backend with the native sandbox: the same probe programs run on both
//! (`kakoi exec --json --backend native|docker`), and the tests compare statuses and what the
//! probes observe from inside. Where the backends legitimately differ, the difference is
//! asserted explicitly (so a change on either side shows up here) and explained.
//!
//! Needs the native capabilities (root, userns, cgroup) and `docker`: an engine that answers
//! and the worker image (`kakoi docker build-image`). `.ci/run` provides both.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kakoi::backend::docker::{DockerBackend, DockerConfig};
use kakoi::{RunResult, Status};
use serde_json::{Value, json};

const BACKENDS: [&str; 2] = ["native", "docker"];

/// Why Docker mode cannot run here, if it cannot.
fn docker_missing() -> Option<String> {
    match DockerBackend::new(DockerConfig::default()) {
        Ok(_) => None,
        Err(e) => Some(match e.hint() {
            Some(hint) => format!("{e} ({hint})"),
            None => e.to_string(),
        }),
    }
}

/// Gate + lock: the native sandbox's capabilities and Docker.
macro_rules! setup {
    () => {{
        let guard = serial();
        if !sandbox_available() {
            return;
        }
        let missing = docker_missing();
        if !require(
            "docker",
            missing.is_none(),
            missing.as_deref().unwrap_or_default(),
        ) {
            return;
        }
        guard
    }};
}

/// `kakoi exec --json --backend <backend> <flags> -- <cmd>`.
fn exec_on(backend: &str, flags: &[&str], cmd: &[&str]) -> (RunResult, std::process::Output) {
    let mut all = vec!["--backend", backend];
    all.extend_from_slice(flags);
    let (r, out) = exec_json(&all, cmd);
    assert_eq!(r.backend, backend, "{r:#?}");
    (r, out)
}

/// Run the probe on one backend; returns what it saw and the result.
fn probe(backend: &str, port: u16, host_paths: &[&str]) -> (Value, RunResult) {
    let file_flag = format!("{}:probe.py", fixture("probe.py").display());
    let port = port.to_string();
    let mut cmd = vec!["python3", "/work/probe.py", port.as_str()];
    cmd.extend_from_slice(host_paths);
    let (r, _) = exec_on(
        backend,
        &["--file", &file_flag, "--env", "KAKOI_PROBE_MARK=1"],
        &cmd,
    );
    assert_eq!(r.status, Status::Ok, "{backend}: probe failed: {r:#?}");
    let v: Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("{backend}: probe printed no JSON ({e}): {}", r.stdout));
    (v, r)
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------
// What the probe observes.
// ---------------------------------------------------------------------------------------

#[test]
fn probe_observes_the_same_isolation_on_both_backends() {
    let _g = setup!();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // A host file that exists only on the host: invisible in both.
    let host_file = PathBuf::from("/tmp").join(unique("docker-parity-visible"));
    std::fs::write(&host_file, "host secret").unwrap();
    let host_path = host_file.to_str().unwrap().to_owned();
    let mut seen = BTreeMap::new();
    for backend in BACKENDS {
        seen.insert(
            backend,
            probe(backend, port, &[host_path.as_str(), "/work/wt"]),
        );
    }
    std::fs::remove_file(&host_file).unwrap();
    drop(listener);

    for backend in BACKENDS {
        let (p, r) = &seen[backend];
        let ctx = |what: &str| format!("{backend}: {what}");
        // Identity: uid/gid 1000, every id.
        for key in ["uid", "euid", "gid", "egid"] {
            assert_eq!(p[key], 1000, "{}", ctx(key));
        }
        assert_eq!(
            p["status_uid"],
            json!([1000, 1000, 1000, 1000]),
            "{}",
            ctx("uids")
        );
        assert_eq!(
            p["status_gid"],
            json!([1000, 1000, 1000, 1000]),
            "{}",
            ctx("gids")
        );
        // No capabilities in any set; no_new_privs; a seccomp filter (mode 2).
        for set in ["cap_eff", "cap_prm", "cap_inh", "cap_bnd", "cap_amb"] {
            assert_eq!(p[set], "0000000000000000", "{}", ctx(set));
        }
        assert_eq!(p["no_new_privs"], "1", "{}", ctx("no_new_privs"));
        assert_eq!(p["seccomp"], "2", "{}", ctx("seccomp mode"));
        // pid namespace: an init as pid 1 and the payload, nothing else.
        let pids: Vec<u64> = p["pids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(pids.len(), 2, "{}: {pids:?}", ctx("pids"));
        assert_eq!(pids[0], 1, "{}", ctx("init pid"));
        assert_eq!(p["ppid"], 1, "{}", ctx("ppid"));
        assert_eq!(p["pid"].as_u64(), Some(pids[1]), "{}", ctx("payload pid"));
        // uts namespace.
        assert_eq!(p["hostname"], "sandbox", "{}", ctx("hostname"));
        // Network: only lo, working; the host's loopback port is unreachable.
        assert_eq!(p["interfaces"], json!(["lo"]), "{}", ctx("interfaces"));
        assert_eq!(p["loopback_works"], true, "{}", ctx("lo"));
        assert!(
            !p["connect_host_port"].is_null(),
            "{}",
            ctx("host port reached")
        );
        // Read-only root; /tmp, /work, /dev/shm writable.
        for (path, outcome) in p["writes"].as_object().unwrap() {
            assert!(
                !outcome.is_null(),
                "{}",
                ctx(&format!("write to {path} succeeded"))
            );
        }
        for path in ["/", "/usr", "/etc/passwd"] {
            assert_eq!(p["writes"][path], "EROFS", "{}", ctx(path));
        }
        for (path, outcome) in p["mkdirs"].as_object().unwrap() {
            assert!(
                !outcome.is_null(),
                "{}",
                ctx(&format!("mkdir {path} succeeded"))
            );
        }
        for (path, outcome) in p["writable_ok"].as_object().unwrap() {
            assert!(
                outcome.is_null(),
                "{}",
                ctx(&format!("{path} not writable: {outcome}"))
            );
        }
        // Host paths are invisible.
        for (path, visible) in p["visible"].as_object().unwrap() {
            assert_eq!(visible, false, "{}", ctx(&format!("{path} visible")));
        }
        // No terminal.
        for fd in 0..3 {
            let v = p["tty"][format!("ttyname_{fd}")].as_str().unwrap();
            assert!(
                v.starts_with("error"),
                "{}",
                ctx(&format!("fd {fd} is a tty"))
            );
        }
        assert!(
            p["tty"]["dev_tty"].as_str().unwrap().starts_with("error"),
            "{}",
            ctx("/dev/tty")
        );
        // The same environment: the fixed base plus the request's variable, nothing of the
        // runner's.
        let env = strings(&p["environ"]);
        let expected: BTreeSet<String> = [
            "HOME",
            "HOSTNAME",
            "KAKOI_PROBE_MARK",
            "LANG",
            "LOGNAME",
            "PATH",
            "TMPDIR",
            "USER",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(env, expected, "{}", ctx("environment"));
        assert_eq!(p["cwd"], "/work", "{}", ctx("cwd"));
        assert_eq!(p["fds"], json!([0, 1, 2, 3]), "{}", ctx("inherited fds"));
        // The result says what was applied.
        let iso = &r.isolation;
        assert_eq!((iso.uid, iso.gid), (1000, 1000), "{}", ctx("isolation ids"));
        assert!(
            iso.capabilities.is_empty() && iso.no_new_privs,
            "{}",
            ctx("isolation caps")
        );
        assert_eq!(iso.network, "none", "{}", ctx("isolation network"));
        let ns: BTreeSet<&str> = iso.namespaces.iter().map(String::as_str).collect();
        for required in ["pid", "net", "mount", "ipc", "uts"] {
            assert!(
                ns.contains(required),
                "{}",
                ctx(&format!("namespace {required} missing: {ns:?}"))
            );
        }
    }

    // Legitimate differences, asserted so that a change on either side shows.
    let (native, native_r) = &seen["native"];
    let (docker, docker_r) = &seen["docker"];
    // Landlock exists only in native mode: it refuses TCP bind on the sandbox's own lo when
    // the network is off; Docker has no such layer (the empty network namespace still keeps
    // the payload off every other network).
    assert_eq!(native["tcp_bind_loopback"], "EACCES");
    assert_eq!(docker["tcp_bind_loopback"], Value::Null);
    assert!(native_r.isolation.landlock.is_some());
    assert!(docker_r.isolation.landlock.is_none());
    // seccomp: kakoi's allowlist (kill + report) vs Docker's default profile (EPERM).
    assert_eq!(
        docker_r.isolation.seccomp.as_ref().unwrap()["profile"],
        "docker-default"
    );
    assert_ne!(native_r.isolation.seccomp, docker_r.isolation.seccomp);
    // User namespace: native maps uid 1000 to an unused host id; Docker (without
    // userns-remap) runs as the host's uid 1000.
    assert!(native_r.isolation.namespaces.iter().any(|n| n == "user"));
    assert!(native_r.isolation.host_uid >= HOST_ID_BASE);
    if !docker_r.isolation.namespaces.iter().any(|n| n == "user") {
        assert_eq!(docker_r.isolation.host_uid, 1000);
    }
    // Docker adds the primary gid as a supplementary group; native clears the list.
    assert_eq!(native["groups"], json!([]));
    assert_eq!(docker["groups"], json!([1000]));
    // pid 1: kakoi's init runs under another identity and its environment is unreadable;
    // docker-init runs as uid 1000 like the payload, so its environment (the request's,
    // nothing of the runner's) is readable.
    assert!(
        native["proc1_environ"]
            .as_str()
            .is_some_and(|s| s.starts_with("error"))
    );
    let init_env: BTreeSet<String> = docker["proc1_environ"]
        .as_array()
        .expect("docker-init's environment is readable")
        .iter()
        .filter_map(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(|s| s.split('=').next().unwrap().to_owned())
        .collect();
    assert!(init_env.contains("KAKOI_PROBE_MARK"), "{init_env:?}");
    assert!(
        !init_env.contains("CARGO"),
        "the runner's environment leaked: {init_env:?}"
    );
    // The root: native builds a minimal one; Docker's is the image's (read-only).
    // `.kakoi-scratch` is the run's tmpfs behind /tmp, /work and /dev/shm (mode 0, closed).
    let allowed_native: BTreeSet<String> = [
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
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert!(strings(&native["root_entries"]).is_subset(&allowed_native));
    assert!(strings(&docker["root_entries"]).contains(".dockerenv"));
    assert!(
        strings(&docker["dev_entries"]).contains("pts"),
        "Docker's /dev has pts"
    );
    assert!(!strings(&native["dev_entries"]).contains("pts"));
}

// ---------------------------------------------------------------------------------------
// Limits: the same statuses.
// ---------------------------------------------------------------------------------------

#[test]
fn memory_hog_is_oom_killed_on_both() {
    let _g = setup!();
    for backend in BACKENDS {
        let (r, _) = exec_on(
            backend,
            &["--memory", "64M", "--timeout", "20"],
            &[
                "python3",
                "-c",
                "x = b'x' * (200 << 20)\nprint('survived', len(x))",
            ],
        );
        assert_eq!(r.status, Status::Oom, "{backend}: {r:#?}");
        assert!(r.oom_killed, "{backend}");
        assert_eq!(r.signal, Some(libc::SIGKILL), "{backend}");
        assert!(!r.stdout.contains("survived"), "{backend}");
        // Docker's figure is the high-water mark of the run's parent cgroup, which also
        // counts the few pages the kernel force-charges while the OOM victim exits (seen:
        // 64 MiB + 12 KiB), so it may pass the limit by a little.
        let peak = r
            .peak_memory_bytes
            .unwrap_or_else(|| panic!("{backend}: no peak memory"));
        assert!(
            peak <= (64 << 20) + (1 << 20) && peak > 32 << 20,
            "{backend}: peak {peak} not near the 64M limit"
        );
    }
}

#[test]
fn fork_bombs_are_contained_on_both() {
    let _g = setup!();
    for backend in BACKENDS {
        let (r, _) = exec_on(
            backend,
            &["--pids", "32", "--timeout", "2"],
            &["sh", "-c", "b() { b | b & }; b; sleep 5"],
        );
        assert!(
            r.status == Status::Timeout || r.stderr.contains("fork"),
            "{backend}: fork bomb not contained: {r:#?}"
        );
        // Deterministic: fork until the kernel refuses. The limit counts the init (kakoi's
        // or docker-init) and the payload, so 30 children fit under 32 on both.
        let script = "import os, time\nn = 0\nwhile True:\n    try:\n        pid = os.fork()\n    except OSError as e:\n        print('fork failed after %d children: %s' % (n, e.strerror), flush=True)\n        break\n    if pid == 0:\n        time.sleep(100)\n        os._exit(0)\n    n += 1\n";
        let (r, _) = exec_on(backend, &["--pids", "32"], &["python3", "-c", script]);
        assert_eq!(r.status, Status::Ok, "{backend}: {r:#?}");
        assert!(
            r.stdout.starts_with("fork failed after 30 children"),
            "{backend}: {:?}",
            r.stdout
        );
    }
}

#[test]
fn timeouts_kill_everything_on_both() {
    let _g = setup!();
    for backend in BACKENDS {
        let (r, _) = exec_on(
            backend,
            &["--timeout", "1"],
            &["sh", "-c", "sleep 1000 & while :; do :; done"],
        );
        assert_eq!(r.status, Status::Timeout, "{backend}: {r:#?}");
        assert_eq!(r.signal, Some(libc::SIGKILL), "{backend}");
        // Native measures from exec; Docker's clock starts at the container's start, before
        // kakoi-entry execs the payload, so its wall time is up to the entry's setup shorter.
        assert!(
            (500.0..3000.0).contains(&r.wall_ms),
            "{backend}: wall_ms {} not about 1000",
            r.wall_ms
        );
        // Without --json: exit 124, like native.
        let out = kakoi_output(&[
            "exec",
            "--backend",
            backend,
            "--timeout",
            "0.5",
            "--",
            "sleep",
            "10",
        ]);
        assert_eq!(out.status.code(), Some(124), "{backend}: {out:?}");
    }
}

#[test]
fn output_floods_are_truncated_exactly_on_both() {
    let _g = setup!();
    for backend in BACKENDS {
        for (stream, redirect) in [("stdout", ""), ("stderr", " >&2")] {
            let script = format!("head -c 5000000 /dev/zero | tr '\\0' a{redirect}; echo done >&2");
            let (r, _) = exec_on(
                backend,
                &["--output-limit", "10000"],
                &["sh", "-c", &script],
            );
            assert_eq!(r.status, Status::OutputLimit, "{backend} {stream}: {r:#?}");
            let (kept, truncated, other) = if stream == "stdout" {
                (r.stdout_bytes(), r.stdout_truncated, r.stderr_truncated)
            } else {
                (r.stderr_bytes(), r.stderr_truncated, r.stdout_truncated)
            };
            assert!(truncated && !other, "{backend} {stream}: flags");
            assert_eq!(kept.len(), 10000, "{backend} {stream}");
            assert!(kept.iter().all(|&b| b == b'a'), "{backend} {stream}");
            if stream == "stdout" {
                // The payload was drained, not blocked: it ran to the end.
                assert_eq!(r.stderr, "done\n", "{backend}");
                assert_eq!(r.exit_code, Some(0), "{backend}");
            }
        }
    }
}

#[test]
fn cpu_time_limit_is_cpu_timeout_on_both() {
    let _g = setup!();
    for backend in BACKENDS {
        let (r, _) = exec_on(
            backend,
            &["--cpu-time", "1", "--timeout", "10"],
            &["python3", "-c", "while True: pass"],
        );
        assert_eq!(r.status, Status::CpuTimeout, "{backend}: {r:#?}");
        assert_eq!(r.signal, Some(libc::SIGXCPU), "{backend}");
        assert!(
            r.cpu_user_ms + r.cpu_sys_ms >= 900.0,
            "{backend}: cpu {} + {}",
            r.cpu_user_ms,
            r.cpu_sys_ms
        );
    }
}

// ---------------------------------------------------------------------------------------
// Exit codes, setup errors, inputs, output bytes.
// ---------------------------------------------------------------------------------------

#[test]
fn exit_codes_signals_and_setup_errors_match() {
    let _g = setup!();
    for backend in BACKENDS {
        let (r, out) = exec_on(backend, &[], &["sh", "-c", "echo hi; echo err >&2; exit 3"]);
        assert_eq!(r.status, Status::RuntimeError, "{backend}");
        assert_eq!((r.exit_code, r.signal), (Some(3), None), "{backend}");
        assert_eq!(
            (r.stdout.as_str(), r.stderr.as_str()),
            ("hi\n", "err\n"),
            "{backend}"
        );
        assert_eq!(out.status.code(), Some(0), "{backend}: --json exits 0");

        let (r, _) = exec_on(backend, &[], &["sh", "-c", "kill -SEGV $$"]);
        assert_eq!(r.status, Status::Signaled, "{backend}: {r:#?}");
        assert_eq!(r.signal, Some(libc::SIGSEGV), "{backend}");
        assert_eq!(r.signal_name.as_deref(), Some("SIGSEGV"), "{backend}");

        // Without --json the exit code passes through.
        let out = kakoi_output(&[
            "exec",
            "--backend",
            backend,
            "--",
            "sh",
            "-c",
            "echo hi; exit 7",
        ]);
        assert_eq!(out.status.code(), Some(7), "{backend}");
        assert_eq!(out.stdout, b"hi\n", "{backend}");

        // A program that is not there, and one that is not executable: setup errors at
        // the exec stage with the errno, exit 125.
        let (r, out) = exec_on(backend, &[], &["/work/missing"]);
        assert_eq!(r.status, Status::SetupError, "{backend}: {r:#?}");
        assert_eq!(out.status.code(), Some(125), "{backend}");
        let e = r.error.expect("error object");
        assert_eq!(
            (e.stage.as_str(), e.errno_name.as_str()),
            ("exec", "ENOENT"),
            "{backend}"
        );
        assert!(e.hint.is_some(), "{backend}");
        let dir = scratch();
        let file = dir.path().join("file.txt");
        std::fs::write(&file, "not a program\n").unwrap();
        let flag = format!("{}:file.txt", file.display());
        let (r, _) = exec_on(backend, &["--file", &flag], &["/work/file.txt"]);
        let e = r.error.expect("error object");
        assert_eq!(
            (e.stage.as_str(), e.errno_name.as_str()),
            ("exec", "EACCES"),
            "{backend}"
        );
        assert_eq!(e.errno, libc::EACCES, "{backend}");
        assert!(
            e.message.contains("/work/file.txt"),
            "{backend}: {}",
            e.message
        );
    }
}

#[test]
fn stdin_env_files_and_binds_reach_the_payload_on_both() {
    let _g = setup!();
    let dir = scratch();
    let stdin = dir.path().join("in.txt");
    std::fs::write(&stdin, "line one\nline two\n").unwrap();
    let csv = dir.path().join("x.csv");
    std::fs::write(&csv, "a,b\n1,2\n").unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("ro.txt"), "read only\n").unwrap();
    let file_flag = format!("{}:data/x.csv", csv.display());
    let bind_flag = format!("{}:/opt/data", data.display());
    let script = "cat; echo \"$GREETING|${EMPTY-unset}\"; stat -c '%u %g %a' /work/data /work/data/x.csv; \
                  cat /work/data/x.csv /opt/data/ro.txt; echo x > /opt/data/ro.txt 2>/dev/null || echo refused";
    let mut outputs = BTreeMap::new();
    for backend in BACKENDS {
        let (r, _) = exec_on(
            backend,
            &[
                "--stdin",
                stdin.to_str().unwrap(),
                "--env",
                "GREETING=hello world",
                "--env",
                "EMPTY=",
                "--file",
                &file_flag,
                "--bind-ro",
                &bind_flag,
            ],
            &["sh", "-c", script],
        );
        assert_eq!(r.status, Status::Ok, "{backend}: {r:#?}");
        outputs.insert(backend, r.stdout);
    }
    // Identical output, owner and modes included.
    assert_eq!(outputs["native"], outputs["docker"]);
    assert!(
        outputs["docker"].starts_with("line one\nline two\nhello world|\n1000 1000 755\n1000 1000 644\na,b\n1,2\nread only\nrefused\n"),
        "{:?}",
        outputs["docker"]
    );
    // No stdin: end of file at once on both.
    for backend in BACKENDS {
        let (r, _) = exec_on(backend, &[], &["sh", "-c", "cat; echo eof"]);
        assert_eq!(r.stdout, "eof\n", "{backend}");
    }
    // `kakoi run` with the docker backend.
    let main = dir.path().join("main.py");
    std::fs::write(&main, "import sys\nprint('args', sys.argv[1:])\n").unwrap();
    for backend in BACKENDS {
        let out = kakoi_output(&[
            "run",
            "--backend",
            backend,
            main.to_str().unwrap(),
            "a",
            "-b",
        ]);
        assert_eq!(out.status.code(), Some(0), "{backend}: {out:?}");
        assert_eq!(out.stdout, b"args ['a', '-b']\n", "{backend}");
    }
}

#[test]
fn non_utf8_output_is_kept_exactly_on_both() {
    let _g = setup!();
    for backend in BACKENDS {
        let (r, _) = exec_on(
            backend,
            &[],
            &["sh", "-c", r"printf '\377\376\000z'; printf '\377' >&2"],
        );
        assert_eq!(r.status, Status::Ok, "{backend}");
        assert_eq!(r.stdout_bytes(), b"\xff\xfe\x00z", "{backend}");
        assert_eq!(r.stderr_bytes(), b"\xff", "{backend}");
        assert!(r.stdout_base64.is_some(), "{backend}");
    }
}

// ---------------------------------------------------------------------------------------
// Docker specifics: accounting, cleanup, errors.
// ---------------------------------------------------------------------------------------

/// Containers labelled as owned by one of `pids` (through the docker CLI).
fn containers_of(pids: &BTreeSet<u32>) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            "label=kakoi.owner",
            "--format",
            "{{.ID}} {{.Label \"kakoi.owner\"}}",
        ])
        .output()
        .expect("run the docker CLI");
    assert!(out.status.success(), "docker ps: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|owner| owner.split('.').next())
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| pids.contains(&pid))
        })
        .map(str::to_owned)
        .collect()
}

/// Per-run parent cgroups of the Docker backend owned by one of `pids`.
fn docker_parents_of(pids: &BTreeSet<u32>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let base = hierarchy.path().join("kakoi-docker");
        for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("run-")
                .and_then(|r| r.split('.').next())
                .and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| pids.contains(&p)) {
                out.push(entry.path());
            }
        }
    }
    out
}

/// Spawn `kakoi exec --json --backend docker <args>`, return the child.
fn spawn_docker(args: &[&str]) -> std::process::Child {
    kakoi()
        .args(["exec", "--json", "--backend", "docker"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for_container(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while containers_of(&[pid].into()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no container appeared for kakoi {pid}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn runs_leave_no_container_or_cgroup_and_report_accounting() {
    let _g = setup!();
    let mut launchers = BTreeSet::new();
    let kinds: [(&[&str], &[&str], Status); 5] = [
        (&[], &["true"], Status::Ok),
        (&[], &["sh", "-c", "kill -KILL $$"], Status::Signaled),
        (&["--timeout", "0.3"], &["sleep", "10"], Status::Timeout),
        (
            &["--memory", "32M"],
            &["python3", "-c", "b'x' * (100 << 20)"],
            Status::Oom,
        ),
        (&[], &["/work/missing"], Status::SetupError),
    ];
    for (flags, cmd, status) in kinds {
        let mut args: Vec<&str> = flags.to_vec();
        args.push("--");
        args.extend_from_slice(cmd);
        let child = spawn_docker(&args);
        launchers.insert(child.id());
        let out = child.wait_with_output().unwrap();
        let r = parse_result(&out);
        assert_eq!(r.status, status, "{cmd:?}: {r:#?}");
        if status == Status::Ok {
            // Accounting comes from the per-run parent cgroup on this (local, cgroupfs) engine.
            assert!(r.peak_memory_bytes.is_some_and(|p| p > 0), "{r:#?}");
            assert!(
                r.isolation.cgroup.reason.is_none(),
                "{:?}",
                r.isolation.cgroup
            );
            assert!(r.timings.setup_ms > 0.0 && r.timings.cleanup_ms > 0.0);
        }
    }
    assert_eq!(
        containers_of(&launchers),
        Vec::<String>::new(),
        "containers left"
    );
    assert_eq!(
        docker_parents_of(&launchers),
        Vec::<PathBuf>::new(),
        "cgroups left"
    );
}

#[test]
fn killed_runner_container_is_removed_by_the_next_start() {
    let _g = setup!();
    let mut child = spawn_docker(&["--timeout", "100", "--", "sleep", "1000"]);
    let pid = child.id();
    wait_for_container(pid);
    child.kill().unwrap(); // SIGKILL: kakoi cannot clean up.
    child.wait().unwrap();
    // Unlike native mode (the sandbox dies with its runner: PDEATHSIG), the container
    // outlives a SIGKILLed kakoi until the next kakoi start sweeps it.
    assert_eq!(
        containers_of(&[pid].into()).len(),
        1,
        "the container should still be there"
    );
    let (r, _) = exec_on("docker", &[], &["true"]);
    assert_eq!(r.status, Status::Ok);
    assert_eq!(
        containers_of(&[pid].into()),
        Vec::<String>::new(),
        "stale container not removed"
    );
    assert_eq!(
        docker_parents_of(&[pid].into()),
        Vec::<PathBuf>::new(),
        "stale cgroup not removed"
    );
}

#[test]
fn sigterm_cancels_the_run_and_removes_the_container() {
    let _g = setup!();
    let child = spawn_docker(&["--timeout", "100", "--", "sleep", "1000"]);
    let pid = child.id();
    wait_for_container(pid);
    // Give the run time to start (the container exists from create on).
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let r = parse_result(&out);
    assert_eq!(r.status, Status::Cancelled, "{r:#?}");
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGTERM),
        "exit 128 + SIGTERM"
    );
    assert_eq!(containers_of(&[pid].into()), Vec::<String>::new());
    assert_eq!(docker_parents_of(&[pid].into()), Vec::<PathBuf>::new());
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn missing_engine_image_and_native_only_flags_are_clear_errors() {
    let _g = setup!();
    let out = kakoi()
        .args(["exec", "--backend", "docker", "--", "true"])
        .env("DOCKER_HOST", "unix:///nonexistent/kakoi-test.sock")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = stderr_of(&out);
    assert!(
        err.contains("cannot reach the Docker engine at unix:///nonexistent/kakoi-test.sock"),
        "{err}"
    );
    assert!(err.contains("hint: start the engine"), "{err}");

    let out = kakoi_output(&[
        "exec",
        "--backend",
        "docker",
        "--docker-image",
        "kakoi-missing:0",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    let err = stderr_of(&out);
    assert!(
        err.contains("docker image kakoi-missing:0 does not exist"),
        "{err}"
    );
    assert!(
        err.contains("hint: build it: kakoi docker build-image"),
        "{err}"
    );

    let out = kakoi_output(&["exec", "--backend", "docker", "--no-seccomp", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr_of(&out).contains("--no-seccomp applies to the native sandbox only"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn docker_mode_is_reported_as_such_with_its_limits() {
    let _g = setup!();
    let (r, _) = exec_on(
        "docker",
        &[
            "--memory",
            "128M",
            "--pids",
            "16",
            "--cpu-time",
            "3",
            "--tmp-size",
            "8M",
        ],
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes \
             /sys/fs/cgroup/pids/pids.max; ulimit -t; df -k /tmp /work | tail -n 2 | awk '{print $2}'",
        ],
    );
    assert_eq!(r.status, Status::Ok, "{r:#?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    let mib128 = (128u64 << 20).to_string();
    assert_eq!(lines[0], mib128, "memory limit");
    assert_eq!(lines[1], mib128, "memory+swap limit: swap must be 0");
    assert_eq!(lines[2], "16", "pids limit");
    assert_eq!(lines[3], "3", "RLIMIT_CPU");
    assert_eq!(&lines[4..], ["8192", "8192"], "tmpfs sizes");
    assert!(r.isolation.rlimits.contains(&("cpu".into(), 3)));
}

#[test]
fn async_client_runs_concurrently_in_a_multi_threaded_runtime_and_cancels() {
    let _g = setup!();
    use kakoi::backend::docker::DockerClient;
    use kakoi::sandbox::RunOptions;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = DockerClient::connect(DockerConfig::default())
            .await
            .unwrap();
        let a = kakoi::RunSpec::command(["sh", "-c", "sleep 0.3; echo a"]);
        let b = kakoi::RunSpec::command(["sh", "-c", "sleep 0.3; echo b >&2"]);
        let started = Instant::now();
        let (a, b) = tokio::join!(
            client.run(&a, RunOptions::default()),
            client.run(&b, RunOptions::default())
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!((a.status, a.stdout.as_str()), (Status::Ok, "a\n"), "{a:#?}");
        assert_eq!((b.status, b.stderr.as_str()), (Status::Ok, "b\n"), "{b:#?}");
        eprintln!("two concurrent docker runs in {:?}", started.elapsed());
        // Cancellation by a future (a server's token): killed, removed, `cancelled`.
        let r = client
            .run_cancellable(
                &kakoi::RunSpec::command(["sleep", "100"]),
                RunOptions::default(),
                tokio::time::sleep(Duration::from_millis(800)),
            )
            .await
            .unwrap();
        assert_eq!(r.status, Status::Cancelled, "{r:#?}");
        assert!(r.wall_ms < 5000.0, "{r:#?}");
        // The synchronous wrapper refuses to block inside a runtime.
        assert!(matches!(
            DockerBackend::new(DockerConfig::default()),
            Err(kakoi::backend::docker::DockerError::InsideRuntime)
        ));
    });
    let me: BTreeSet<u32> = [std::process::id()].into();
    assert_eq!(containers_of(&me), Vec::<String>::new(), "containers left");
    assert_eq!(
        docker_parents_of(&me),
        Vec::<PathBuf>::new(),
        "cgroups left"
    );
}

// ---------------------------------------------------------------------------------------
// Returned files (`--collect`): the same entries on both backends.
// ---------------------------------------------------------------------------------------

/// The escape suite's returned-files attack program, as an input file (`/work/attacks.py`).
fn attacks_flag() -> String {
    format!("{}:attacks.py", fixture("escape/attacks.py").display())
}

/// `(path, size, skipped, content)` of each returned entry.
type Entry = (String, u64, Option<String>, Option<Vec<u8>>);

fn entries(r: &RunResult) -> Vec<Entry> {
    use base64::Engine as _;
    r.files
        .iter()
        .map(|f| {
            let content = f
                .base64
                .as_deref()
                .map(|b| base64::engine::general_purpose::STANDARD.decode(b).unwrap());
            (f.path.clone(), f.size, f.skipped.clone(), content)
        })
        .collect()
}

/// Symlinks (to /etc/shadow, /proc/1/root, /, loops), hardlinks, a FIFO, a socket, a 60 MiB
/// sparse file, a 200-deep tree, 5000 files, a mode-0 file, odd and non-UTF-8 names, and a
/// daemonized grandchild swapping a file and a symlink: the escape suite's attacks, run on
/// both backends. Every entry is the same — path, size, why skipped, content — except the
/// raced name (`race*`: a file or a symlink, whichever the kill found) and, since that shifts
/// the count cap by one, the last `many/` entries before the `limit` entry.
#[test]
fn returned_files_attacks_give_the_same_files_on_both() {
    let _g = setup!();
    let attacks = attacks_flag();
    let mut seen = BTreeMap::new();
    for backend in BACKENDS {
        let (r, _) = exec_on(
            backend,
            &["--collect", "out", "--timeout", "20", "--file", &attacks],
            &["python3", "/work/attacks.py", "out-attacks"],
        );
        assert_eq!(r.status, Status::Ok, "{backend}: {r:#?}");
        assert!(
            r.stdout.contains("planted ok"),
            "{backend}: {}\n{}",
            r.stdout,
            r.stderr
        );
        let all = entries(&r);
        // The count cap (64) and one `limit` entry.
        assert_eq!(all.len(), 65, "{backend}: {all:#?}");
        assert_eq!(all[64].2.as_deref(), Some("limit"), "{backend}");
        for (path, _, skipped, content) in &all {
            if path.starts_with("link_") || path == "fifo" || path == "socket" {
                assert!(content.is_none(), "{backend}: {path} was read");
            }
            if path == "sparse" {
                assert_eq!(skipped.as_deref(), Some("too_large"), "{backend}");
            }
            if let Some(c) = content {
                let text = String::from_utf8_lossy(c);
                assert!(
                    !text.contains("root:"),
                    "{backend}: {path} holds a host file"
                );
            }
        }
        let ok = all.iter().find(|e| e.0 == "ok.txt").expect("ok.txt");
        assert_eq!(ok.3.as_deref(), Some(&b"fine"[..]), "{backend}");
        seen.insert(backend, all);
    }
    let stable = |all: &[Entry]| -> Vec<Entry> {
        all.iter()
            .filter(|e| !e.0.starts_with("race"))
            .cloned()
            .collect()
    };
    let (native, docker) = (stable(&seen["native"]), stable(&seen["docker"]));
    // Everything up to the first `many/` entry is the same, in the same order.
    let head = |all: &[Entry]| -> Vec<Entry> {
        all.iter()
            .take_while(|e| !e.0.starts_with("many/"))
            .cloned()
            .collect()
    };
    let native_head = head(&native);
    assert_eq!(native_head, head(&docker));
    let listed: BTreeSet<&str> = native_head.iter().map(|e| e.0.as_str()).collect();
    for name in [
        "hard_private",
        "link_etc_shadow",
        "link_proc1_root_shadow",
        "link_loop",
        "sparse",
        "unreadable",
        "fifo",
        "socket",
        "ok.txt",
    ] {
        assert!(listed.contains(name), "{name} not listed: {listed:?}");
    }
    // The deep tree stops at the depth cap on both.
    assert!(
        native_head
            .iter()
            .any(|e| e.0.starts_with("d/d/") && e.2.as_deref() == Some("depth"))
    );
    // The `many/` entries agree where both have them (the `limit` entry names the first
    // one left out, which the raced names shift).
    let many = |all: &[Entry]| -> Vec<Entry> {
        all.iter()
            .filter(|e| e.0.starts_with("many/") && e.2.as_deref() != Some("limit"))
            .cloned()
            .collect()
    };
    let (a, b) = (many(&native), many(&docker));
    let common = a.len().min(b.len());
    assert!(common > 10, "{a:?}");
    assert_eq!(a[..common], b[..common]);
}

/// The output directory replaced by a symlink (to the toolchain, to pid 1's root, to /etc):
/// one entry, the directory itself, skipped as a symlink, on both.
#[test]
fn returned_files_out_dir_symlink_is_refused_on_both() {
    let _g = setup!();
    let attacks = attacks_flag();
    for backend in BACKENDS {
        for target in ["/usr/bin", "/proc/1/root/etc", "/etc"] {
            let (r, _) = exec_on(
                backend,
                &["--collect", "out", "--file", &attacks],
                &["python3", "/work/attacks.py", "out-dir-symlink", target],
            );
            assert_eq!(r.status, Status::Ok, "{backend}: {r:#?}");
            assert_eq!(
                entries(&r),
                [(".".to_string(), 0, Some("symlink".to_string()), None)],
                "{backend}: out -> {target}"
            );
        }
    }
}

/// Nested collect directories, one missing, and a file in its place: the same on both; the
/// directory exists, empty and owned by 1000 (mode 755), when the payload starts.
#[test]
fn returned_files_directory_cases_match() {
    let _g = setup!();
    for backend in BACKENDS {
        let (r, _) = exec_on(
            backend,
            &["--collect", "res/out"],
            &[
                "sh",
                "-c",
                "stat -c '%u %g %a' res/out; ls -A res/out | wc -l; printf x > res/out/a; \
                 mkdir res/out/sub; printf yy > res/out/sub/b; printf '' > res/out/empty",
            ],
        );
        assert_eq!(r.status, Status::Ok, "{backend}: {r:#?}");
        assert_eq!(r.stdout, "1000 1000 755\n0\n", "{backend}");
        assert_eq!(
            entries(&r),
            [
                ("a".to_string(), 1, None, Some(b"x".to_vec())),
                ("empty".to_string(), 0, None, Some(vec![])),
                ("sub/b".to_string(), 2, None, Some(b"yy".to_vec())),
            ],
            "{backend}"
        );
        // Removed by the payload: no entries. Replaced by a file: one `not_regular`.
        let (r, _) = exec_on(backend, &["--collect", "out"], &["rmdir", "out"]);
        assert_eq!((r.status, r.files.len()), (Status::Ok, 0), "{backend}");
        let (r, _) = exec_on(
            backend,
            &["--collect", "a/out"],
            &["sh", "-c", "rm -r a; echo file > a"],
        );
        assert_eq!(
            entries(&r),
            [(".".to_string(), 0, Some("not_regular".to_string()), None)],
            "{backend}"
        );
        // An intermediate symlink: refused as a symlink, never followed.
        let (r, _) = exec_on(
            backend,
            &["--collect", "a/out"],
            &[
                "sh",
                "-c",
                "mkdir -p /tmp/x/out; echo s > /tmp/x/out/s; rm -r a; ln -s /tmp/x a",
            ],
        );
        assert_eq!(
            entries(&r),
            [(".".to_string(), 0, Some("symlink".to_string()), None)],
            "{backend}"
        );
    }
}

/// Caps (count, per file, total): the Docker backend's entries equal what the native walker
/// returns for the same tree (built on the host, walked in-process), and the payload's
/// stdout and stderr stay exactly its own on both (no marker or listing bytes), even without
/// a final newline.
#[test]
fn returned_files_caps_and_output_match() {
    let _g = setup!();
    use kakoi::sandbox::RunOptions;
    use std::os::fd::AsFd as _;
    let caps = kakoi::spec::Collect {
        max_files: 6,
        max_file_bytes: 500,
        max_total_bytes: 1000,
        ..kakoi::spec::Collect::default()
    };
    let script = "for i in 1 2 3 4 5 6 7; do head -c $((i * 100)) /dev/zero > out/f$i; done; \
                  printf 'no newline'; printf 'err no newline' >&2";
    let mut spec = kakoi::RunSpec::command(["sh", "-c", script]);
    spec.collect = Some(caps.clone());
    let docker = DockerBackend::new(DockerConfig::default())
        .unwrap()
        .run(&spec, RunOptions::default())
        .unwrap();
    assert_eq!(docker.status, Status::Ok, "{docker:#?}");
    assert_eq!(
        (docker.stdout.as_str(), docker.stderr.as_str()),
        ("no newline", "err no newline")
    );
    let host = scratch();
    std::fs::create_dir(host.path().join("out")).unwrap();
    for i in 1..=7u64 {
        std::fs::write(
            host.path().join(format!("out/f{i}")),
            vec![0u8; (i * 100) as usize],
        )
        .unwrap();
    }
    let dir = std::fs::File::open(host.path()).unwrap();
    let native = kakoi::sandbox::collect::collect(dir.as_fd(), &caps);
    assert_eq!(docker.files, native);
    let skipped: Vec<Option<&str>> = native.iter().map(|f| f.skipped.as_deref()).collect();
    assert_eq!(
        skipped,
        [
            None,
            None,
            None,
            None,
            Some("limit"),
            Some("too_large"),
            Some("limit")
        ]
    );
    // The same output through the native sandbox.
    let (r, _) = exec_on("native", &["--collect", "out"], &["sh", "-c", script]);
    assert_eq!(
        (r.stdout.as_str(), r.stderr.as_str()),
        ("no newline", "err no newline")
    );
}

/// A run that times out still returns what it wrote (native walks the tmpfs after killing
/// the tree; Docker kills every process but the entry, which then lists), even when the
/// payload used up its pids limit; the container is removed. So does an OOM-killed run.
#[test]
fn returned_files_survive_a_timeout_on_both() {
    let _g = setup!();
    let bomb = "import os, time\nopen('out/before.txt', 'w').write('written')\n\
                n = 0\nwhile True:\n    try:\n        pid = os.fork()\n    except OSError:\n        break\n    \
                if pid == 0:\n        time.sleep(100)\n        os._exit(0)\n    n += 1\n\
                print('children', n, flush=True)\ntime.sleep(100)\n";
    for backend in BACKENDS {
        let child = kakoi()
            .args(["exec", "--json", "--backend", backend])
            .args(["--collect", "out", "--timeout", "2", "--pids", "16"])
            .args(["--", "python3", "-c", bomb])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        let r = parse_result(&out);
        assert_eq!(r.status, Status::Timeout, "{backend}: {r:#?}");
        assert_eq!(r.stdout, "children 14\n", "{backend}");
        assert_eq!(
            entries(&r),
            [("before.txt".to_string(), 7, None, Some(b"written".to_vec()))],
            "{backend}"
        );
        assert!(r.wall_ms < 6000.0, "{backend}: {}", r.wall_ms);
        assert_eq!(containers_of(&[pid].into()), Vec::<String>::new());
        // The OOM killer ends the payload: still `oom`, still the files.
        let (r, _) = exec_on(
            backend,
            &["--collect", "out", "--memory", "64M"],
            &[
                "python3",
                "-c",
                "open('out/a', 'w').write('a')\nx = b'x' * (200 << 20)",
            ],
        );
        assert_eq!((r.status, r.oom_killed), (Status::Oom, true), "{backend}");
        assert_eq!(
            entries(&r),
            [("a".to_string(), 1, None, Some(b"a".to_vec()))],
            "{backend}"
        );
    }
}

/// `RunOptions::cancel` through the synchronous Docker backend: the fd becoming readable
/// cancels the run like native mode (status `cancelled`, container removed), with or without
/// returned files; a bad fd is a clear error.
#[test]
fn cancel_fd_cancels_a_docker_run() {
    let _g = setup!();
    use kakoi::sandbox::RunOptions;
    use std::io::Write as _;
    use std::os::fd::AsRawFd as _;
    let backend = DockerBackend::new(DockerConfig::default()).unwrap();
    for collect in [false, true] {
        let (read, write) = std::io::pipe().unwrap();
        let mut spec = kakoi::RunSpec::command([
            "sh",
            "-c",
            "echo kept > out/kept.txt 2>/dev/null; sleep 100",
        ]);
        spec.limits.timeout = Some(60.0);
        if collect {
            spec.collect = Some(kakoi::spec::Collect::default());
        }
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            let mut write = write;
            write.write_all(b"x").unwrap();
        });
        let started = Instant::now();
        let r = backend
            .run(
                &spec,
                RunOptions {
                    cancel: Some(read.as_raw_fd()),
                    ..RunOptions::default()
                },
            )
            .unwrap();
        writer.join().unwrap();
        assert_eq!(r.status, Status::Cancelled, "collect {collect}: {r:#?}");
        assert!(started.elapsed() < Duration::from_secs(20));
        if collect {
            assert_eq!(r.files.len(), 1, "{r:#?}");
            assert_eq!(r.files[0].path, "kept.txt");
        } else {
            assert!(r.files.is_empty());
        }
    }
    // A closed writer (hang-up) cancels too; an fd that is not open is an error.
    let (read, write) = std::io::pipe().unwrap();
    drop(write);
    let r = backend
        .run(
            &kakoi::RunSpec::command(["sleep", "100"]),
            RunOptions {
                cancel: Some(read.as_raw_fd()),
                ..RunOptions::default()
            },
        )
        .unwrap();
    assert_eq!(r.status, Status::Cancelled, "{r:#?}");
    let e = backend
        .run(
            &kakoi::RunSpec::command(["true"]),
            RunOptions {
                cancel: Some(987_654),
                ..RunOptions::default()
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("cancel fd 987654"), "{e}");
    let me: BTreeSet<u32> = [std::process::id()].into();
    assert_eq!(containers_of(&me), Vec::<String>::new(), "containers left");
}
