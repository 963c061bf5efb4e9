//! The core API the HTTP manager and the Docker backend build on, tested from inside the
//! sandbox: returned files (`RunSpec::collect`, `--collect DIR`) and cancellation
//! (`RunOptions::cancel`, and the CLI on SIGINT/SIGTERM/SIGHUP).

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use kakoi::result::OutputFile;
use kakoi::{RunResult, Status};
use serde_json::Value;

macro_rules! setup {
    () => {{
        let guard = serial();
        if !sandbox_available() {
            return;
        }
        guard
    }};
}

/// `kakoi exec --json --collect out -- python3 -c CODE`.
fn collect_run(code: &str, extra: &[&str]) -> RunResult {
    let mut flags = vec!["--collect", "out"];
    flags.extend_from_slice(extra);
    let (r, out) = exec_json(&flags, &["python3", "-c", code]);
    assert_eq!(
        r.status,
        Status::Ok,
        "{r:#?}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    r
}

fn entry<'a>(r: &'a RunResult, path: &str) -> &'a OutputFile {
    r.files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("{path} not returned: {:#?}", r.files))
}

fn bytes(f: &OutputFile) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(
            f.base64
                .as_deref()
                .unwrap_or_else(|| panic!("no content: {f:?}")),
        )
        .unwrap()
}

#[test]
fn returned_files_from_inside_the_sandbox() {
    let _g = setup!();
    let r = collect_run(
        r#"
import os
os.makedirs("out/plots/2024", exist_ok=True)
png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
open("out/plots/2024/plot.png", "wb").write(png)
open("out/result.json", "w").write('{"answer": 42}\n')
os.symlink("/etc/passwd", "out/passwd")
os.symlink("../..", "out/up")
open("data.txt", "w").write("in the workdir, linked into out\n")
os.link("data.txt", "out/hard.txt")
os.mkfifo("out/fifo")
with open("out/sparse", "wb") as f:
    f.truncate(60 << 20)  # sparse, under RLIMIT_FSIZE, over the 10 MiB cap
print(len(png))
"#,
        &[],
    );
    let png_len: usize = r.stdout.trim().parse().unwrap();
    let png = bytes(entry(&r, "plots/2024/plot.png"));
    assert_eq!(png.len(), png_len);
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    assert_eq!(bytes(entry(&r, "result.json")), b"{\"answer\": 42}\n");
    assert_eq!(
        bytes(entry(&r, "hard.txt")),
        b"in the workdir, linked into out\n"
    );
    for (path, why) in [
        ("passwd", "symlink"),
        ("up", "symlink"),
        ("fifo", "not_regular"),
        ("sparse", "too_large"),
    ] {
        let f = entry(&r, path);
        assert_eq!(f.skipped.as_deref(), Some(why), "{f:?}");
        assert!(f.base64.is_none(), "{f:?}");
    }
    assert_eq!(entry(&r, "sparse").size, 60 << 20);
    // Nothing outside out/ and nothing of the host.
    assert!(
        r.files
            .iter()
            .all(|f| !f.path.contains("data.txt") && !f.path.starts_with('/')),
        "{:#?}",
        r.files
    );
    let total: u64 = r
        .files
        .iter()
        .filter(|f| f.skipped.is_none())
        .map(|f| f.size)
        .sum();
    assert!(total <= 10 << 20);
}

#[test]
fn returned_files_are_capped_in_count() {
    let _g = setup!();
    let started = Instant::now();
    let r = collect_run(
        r#"
import os
os.makedirs("out", exist_ok=True)
for i in range(10000):
    open(f"out/f{i:05}", "w").write("x")
"#,
        &[],
    );
    assert_eq!(r.files.len(), 65, "64 entries and one limit marker");
    assert!(r.files[..64].iter().all(|f| bytes(f) == b"x"));
    assert_eq!(r.files[64].path, "f00064");
    assert_eq!(r.files[64].skipped.as_deref(), Some("limit"));
    eprintln!(
        "10,000 files written and collected in {:?}",
        started.elapsed()
    );
}

#[test]
fn out_missing_or_a_symlink_returns_nothing_of_the_target() {
    let _g = setup!();
    // With --collect the output directory exists (empty, the payload's) when the program starts.
    let r = collect_run(
        "import os; st = os.stat('out'); print(os.listdir('out'), st.st_uid, oct(st.st_mode & 0o777))",
        &[],
    );
    assert_eq!(r.stdout, "[] 1000 0o755\n", "{r:#?}");
    assert!(r.files.is_empty(), "{:#?}", r.files);
    let r = collect_run("import os; os.rmdir('out'); print('no out')", &[]);
    assert_eq!(r.status, Status::Ok, "{r:#?}");
    assert!(r.files.is_empty(), "{:#?}", r.files);
    let r = collect_run(
        "import os; os.makedirs('real'); open('real/x', 'w').write('x'); os.rmdir('out'); os.symlink('/etc', 'out')",
        &[],
    );
    assert_eq!(r.files.len(), 1, "{:#?}", r.files);
    assert_eq!(r.files[0].path, ".");
    assert_eq!(r.files[0].skipped.as_deref(), Some("symlink"));
    // Without --collect nothing is returned even when out/ exists.
    let (r, _) = exec_json(
        &[],
        &[
            "python3",
            "-c",
            "import os; os.makedirs('out'); open('out/x','w').write('x')",
        ],
    );
    assert_eq!(r.status, Status::Ok);
    assert!(r.files.is_empty());
}

/// Host mounts that belong to kakoi's runtime directory (other engineers' and CI's runs on
/// this host do not mount there in the host namespace either, so this must not change).
fn kakoi_host_mounts() -> Vec<String> {
    host_mounts()
        .into_iter()
        .filter(|m| m.contains("/run/kakoi") && !m.contains("/run/kakoi/netns-v1/"))
        .collect()
}

#[test]
fn returned_files_survive_a_timeout_and_leave_nothing_behind() {
    let _g = setup!();
    let mounts = kakoi_host_mounts();
    let child = kakoi()
        .args(["exec", "--json", "--collect", "out", "--timeout", "1", "--"])
        .args([
            "python3",
            "-c",
            "import os, time; os.makedirs('out', exist_ok=True); open('out/partial.txt','w').write('so far'); time.sleep(60)",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let launcher = child.id();
    let out = child.wait_with_output().unwrap();
    let r = parse_result(&out);
    assert_eq!(r.status, Status::Timeout, "{r:#?}");
    assert_eq!(bytes(entry(&r, "partial.txt")), b"so far");
    // Scoped to this launcher: other runs share the host.
    let launchers: BTreeSet<u32> = [launcher].into();
    assert_eq!(run_cgroups_of(&launchers), Vec::<PathBuf>::new());
    let uid: BTreeSet<u32> = [host_uid_of_launcher(launcher)].into();
    assert_eq!(processes_of(&uid), vec![]);
    assert_eq!(kakoi_host_mounts(), mounts);
}

/// Start `kakoi exec [--json] -- sleep 1000 & sleep 1000` and wait until the sandbox runs.
fn start_sleeper(json: bool) -> (std::process::Child, BTreeSet<u32>) {
    let mut args = vec!["exec"];
    if json {
        args.push("--json");
    }
    args.extend(["--", "sh", "-c", "sleep 1000 & sleep 1000"]);
    let child = kakoi()
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let uid: BTreeSet<u32> = [host_uid_of_launcher(child.id())].into();
    let deadline = Instant::now() + Duration::from_secs(5);
    while processes_of(&uid).len() < 3 {
        assert!(Instant::now() < deadline, "the sandbox never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    (child, uid)
}

#[test]
fn cli_signals_cancel_the_run_and_clean_up() {
    let _g = setup!();
    let mounts = kakoi_host_mounts();
    let tmp = tmp_kakoi_entries();
    for (signal, code) in [
        (libc::SIGTERM, 143),
        (libc::SIGINT, 130),
        (libc::SIGHUP, 129),
    ] {
        let (child, uid) = start_sleeper(signal == libc::SIGTERM);
        let launcher = child.id();
        let launchers: BTreeSet<u32> = [launcher].into();
        assert!(!run_cgroups_of(&launchers).is_empty());
        let sent = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(launcher as i32),
            nix::sys::signal::Signal::try_from(signal).unwrap(),
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        let waited = sent.elapsed();
        assert_eq!(
            out.status.code(),
            Some(code),
            "signal {signal}: {out:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if signal == libc::SIGTERM {
            let r = parse_result(&out);
            assert_eq!(r.status, Status::Cancelled, "{r:#?}");
        } else {
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("cancelled"),
                "{out:?}"
            );
        }
        // Everything was gone before kakoi exited: no polling needed.
        assert_eq!(
            processes_of(&uid),
            vec![],
            "sandbox processes outlived kakoi"
        );
        assert_eq!(run_cgroups_of(&launchers), Vec::<PathBuf>::new());
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }
    assert_eq!(kakoi_host_mounts(), mounts);
    assert_eq!(tmp_kakoi_entries(), tmp);
}

fn embed_example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(std::path::Path::parent)
        .unwrap()
        .join("examples/embed");
    assert!(
        path.is_file(),
        "{} missing: run through cargo test",
        path.display()
    );
    path
}

#[test]
fn library_run_is_cancelled_through_an_fd() {
    let _g = setup!();
    let started = Instant::now();
    let out = std::process::Command::new(embed_example())
        .args(["--cancel-after", "300"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "cancelled", "{v}");
    assert_eq!(v["children_left"], 0, "{v}");
    // Cancelled at ~300 ms of a 30 s sleep.
    assert!(started.elapsed() < Duration::from_secs(5));
    let uid: BTreeSet<u32> = [v["host_uid"].as_u64().unwrap() as u32].into();
    assert_eq!(processes_of(&uid), vec![]);
}

// ---------------------------------------------------------------------------------------
// Pre-made network namespaces (src/sandbox/netns.rs).
// ---------------------------------------------------------------------------------------

const NS_LINK: &str = "import os; print(os.readlink('/proc/self/ns/net'))";

/// `SIOCSIFFLAGS` on lo from inside: the pooled namespace belongs to the host's user
/// namespace, so the sandbox cannot change it (EPERM), not even with the capabilities of its
/// own user namespace, which it has dropped anyway.
const LO_DOWN: &str = r#"
import fcntl, socket, struct, os
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
req = struct.pack("16sh14x", b"lo", 0)
flags = struct.unpack("16sh14x", fcntl.ioctl(s, 0x8913, req))[1]  # SIOCGIFFLAGS
try:
    fcntl.ioctl(s, 0x8914, struct.pack("16sh14x", b"lo", flags & ~1))  # SIOCSIFFLAGS, not UP
    print("changed")
except OSError as e:
    print("refused", e.errno)
print("up" if flags & 1 else "down")
"#;

#[test]
fn concurrent_runs_get_distinct_pooled_namespaces_they_cannot_change() {
    let _g = setup!();
    let code = format!("{NS_LINK}; import time; time.sleep(1.5)");
    let first = kakoi()
        .args(["exec", "--json", "--", "python3", "-c", &code])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let (second, _) = exec_json(&[], &["python3", "-c", &format!("{NS_LINK}\n{LO_DOWN}")]);
    let first = parse_result(&first.wait_with_output().unwrap());
    for r in [&first, &second] {
        assert_eq!(r.status, Status::Ok, "{r:#?}");
        assert_eq!(
            r.isolation.net_namespace.as_deref(),
            Some("pooled"),
            "{r:#?}"
        );
    }
    let first_ns = first.stdout.lines().next().unwrap();
    let mut lines = second.stdout.lines();
    let second_ns = lines.next().unwrap();
    assert!(first_ns.starts_with("net:["), "{first_ns}");
    assert_ne!(
        first_ns, second_ns,
        "two live runs shared a network namespace"
    );
    assert_eq!(lines.next(), Some("refused 1"), "{}", second.stdout);
    assert_eq!(lines.next(), Some("up"));
    // The host's namespace is not either run's.
    let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(host_ns.to_string_lossy(), first_ns);
    assert_ne!(host_ns.to_string_lossy(), second_ns);
}

#[test]
fn a_pooled_namespace_is_reused_with_nothing_of_the_last_run_in_it() {
    let _g = setup!();
    // Run 1 binds a UDP port and exits; run 2, in the same namespace, binds the same port
    // and sees no socket of run 1 in /proc/net/udp.
    let bind = "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1', 45454)); print(open('/proc/net/udp').read().count(':B18E'))";
    let (one, _) = exec_json(&[], &["python3", "-c", &format!("{NS_LINK}\n{bind}")]);
    let (two, _) = exec_json(&[], &["python3", "-c", &format!("{NS_LINK}\n{bind}")]);
    for r in [&one, &two] {
        assert_eq!(r.status, Status::Ok, "{r:#?}");
        assert_eq!(r.isolation.net_namespace.as_deref(), Some("pooled"));
        // Exactly its own socket on port 45454 (0xB18E).
        assert_eq!(r.stdout.lines().nth(1), Some("1"), "{}", r.stdout);
    }
    assert_eq!(
        one.stdout.lines().next(),
        two.stdout.lines().next(),
        "an idle pool should hand out the same slot again"
    );
    // With the pool off, every run gets its own namespace, and says so.
    let (fresh, _) = exec_json(&["--netns-pool", "0"], &["python3", "-c", NS_LINK]);
    assert_eq!(fresh.status, Status::Ok, "{fresh:#?}");
    assert_eq!(fresh.isolation.net_namespace.as_deref(), Some("fresh"));
    assert_ne!(fresh.stdout.lines().next(), one.stdout.lines().next());
    // And the host's network has none.
    let (host, _) = exec_json(
        &["--network", "host", "--i-understand-host-network"],
        &["true"],
    );
    assert_eq!(host.isolation.net_namespace, None);
}

#[test]
fn the_pool_recycles_a_dead_launchers_slot_and_falls_back_when_full() {
    let _g = setup!();
    if !require(
        "root",
        nix::unistd::geteuid().is_root(),
        "the pool needs root",
    ) {
        return;
    }
    use kakoi::sandbox::netns::{NetnsLease, NetnsPool};
    let own = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let pool = NetnsPool::open(runtime.path(), 2).unwrap().unwrap();
    /// Unmounts the test's slots even when an assertion fails.
    struct Cleanup<'a>(&'a NetnsPool);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            self.0.remove_idle();
        }
    }
    let _cleanup = Cleanup(&pool);
    let inode = |lease: &NetnsLease| {
        let fd = lease.namespace().expect("pooled");
        nix::sys::stat::fstat(fd).unwrap().st_ino
    };
    let a = pool.acquire().unwrap();
    let b = pool.acquire().unwrap();
    let c = pool.acquire().unwrap();
    assert_eq!(a.kind(), "pooled");
    assert_eq!(b.kind(), "pooled");
    assert_eq!(
        c.kind(),
        "fresh",
        "a full pool falls back to a fresh namespace"
    );
    assert_ne!(inode(&a), inode(&b));
    assert_eq!(pool.census(), (2, 2));
    let a_inode = inode(&a);
    drop((a, b, c));
    assert_eq!(pool.census(), (2, 0));
    // Released cleanly: the same namespace again.
    let again = pool.acquire().unwrap();
    assert_eq!(inode(&again), a_inode);
    drop(again);
    // A launcher that died while holding slot 0 left it marked in use: the next run gets a
    // new namespace there, never the one a dying process may still hold.
    std::fs::write(pool.dir().join("0.lock"), "D").unwrap();
    let recycled = pool.acquire().unwrap();
    assert_eq!(recycled.kind(), "pooled");
    assert_ne!(inode(&recycled), a_inode);
    drop(recycled);
    // The launcher's own namespace is untouched by all of this.
    assert_eq!(std::fs::read_link("/proc/thread-self/ns/net").unwrap(), own);
    assert_eq!(pool.remove_idle(), 2);
    assert_eq!(pool.census(), (0, 0));
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&runtime.path().display().to_string()),
        "slot mounts left behind"
    );
}

#[test]
fn the_payload_starts_with_default_signal_dispositions_and_mask() {
    let _g = setup!();
    // kakoi (a Rust program) ignores SIGPIPE; the payload must not inherit that: a writer to
    // a closed pipe dies of SIGPIPE like anywhere else.
    let (r, _) = exec_json(
        &[],
        &[
            "sh",
            "-c",
            "grep -E '^Sig(Ign|Blk)' /proc/self/status; yes | head -c 2 >/dev/null; echo done; cat /proc/self/oom_score_adj",
        ],
    );
    assert_eq!(r.status, Status::Ok, "{r:#?}");
    // And it is the OOM killer's first choice (oom_score_adj 1000).
    assert_eq!(
        r.stdout,
        "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\ndone\n1000\n"
    );
    assert_eq!(r.stderr, "", "yes saw EPIPE instead of dying of SIGPIPE");
}

#[test]
fn scratch_space_is_one_tmpfs_seen_only_through_its_three_views() {
    let _g = setup!();
    let code = r#"
import os, errno
def err(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
open("/tmp/t", "w").write("t")
os.makedirs("/work/out", exist_ok=True)
print(err(lambda: os.listdir("/.kakoi-scratch")))
print(err(lambda: os.chmod("/.kakoi-scratch", 0o755)))
print(err(lambda: os.link("/tmp/t", "/work/out/t")))
print(err(lambda: os.rename("/tmp/t", "/work/t")))
print(err(lambda: os.link("/etc/passwd", "/work/out/passwd")))
big = b"x" * (3 << 20)
open("/tmp/a", "wb").write(big)
open("/dev/shm/b", "wb").write(big)
print(err(lambda: open("/work/c", "wb").write(big)))
"#;
    let (r, _) = exec_json(&["--tmp-size", "8M"], &["python3", "-c", code]);
    assert_eq!(r.status, Status::Ok, "{r:#?}");
    assert_eq!(
        r.stdout, "EACCES\nEROFS\nEXDEV\nEXDEV\nEXDEV\nENOSPC\n",
        "{r:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// Pre-warmed cgroups for long-lived launchers (src/sandbox/warm.rs).
// ---------------------------------------------------------------------------------------

/// `embed --serve --prewarm`: a warm launcher; one JSON argv per line in, one reply out.
struct Warm {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Warm {
    fn start() -> Warm {
        let mut child = std::process::Command::new(embed_example())
            .args(["--serve", "--prewarm"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        Warm { child, out }
    }

    fn run(&mut self, argv: &[&str]) -> Value {
        self.run_request(serde_json::json!(argv))
    }

    fn run_request(&mut self, request: Value) -> Value {
        use std::io::{BufRead, Write};
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{request}").unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }
}

/// Distinct run cgroups of `launchers` (v1 has one directory per hierarchy).
fn run_names_of(launchers: &BTreeSet<u32>) -> BTreeSet<std::ffi::OsString> {
    run_cgroups_of(launchers)
        .iter()
        .filter_map(|p| p.file_name().map(ToOwned::to_owned))
        .collect()
}

/// Polls until `launchers` have exactly `n` distinct run cgroups: the next run's cgroup is
/// made after the reply, so it appears a moment later (2 s at most).
fn await_run_names(launchers: &BTreeSet<u32>, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let names = run_names_of(launchers);
        if names.len() == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} run cgroups, expected {n}: {names:?}",
            names.len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn is_v1() -> bool {
    std::path::Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists()
}

#[test]
fn prewarmed_runs_keep_every_limit_and_leave_nothing_behind() {
    let _g = setup!();
    if !require("cgroup", is_v1(), "pre-warming is for cgroup v1 hosts") {
        return;
    }
    let mut warm = Warm::start();
    let launcher = warm.child.id();
    let launchers: BTreeSet<u32> = [launcher].into();
    let mut prewarmed = 0;
    for i in 0..4 {
        // Give the stub time to move into its cgroup, as a server between requests would.
        std::thread::sleep(Duration::from_millis(300));
        let r = warm.run(&["python3", "-c", "print(6 * 7)"]);
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["stdout"], "42\n");
        if r["cgroup"]["attach"] == "prewarmed" {
            prewarmed += 1;
        } else {
            assert_eq!(r["cgroup"]["attach"], "move_self", "run {i}: {r}");
        }
        // The next run's cgroup and its stub exist between requests.
        await_run_names(&launchers, 1, &format!("run {i}"));
    }
    assert!(prewarmed >= 3, "only {prewarmed} of 4 runs were pre-warmed");
    // Limits hold in a pre-warmed cgroup from the first instruction.
    std::thread::sleep(Duration::from_millis(300));
    let hog = warm.run(&["python3", "-c", "x = bytearray(400 << 20)"]);
    assert_eq!(hog["status"], "oom", "{hog}");
    assert_eq!(hog["cgroup"]["attach"], "prewarmed");
    std::thread::sleep(Duration::from_millis(300));
    let bomb = warm.run(&[
        "python3",
        "-c",
        "import os\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            import time; time.sleep(5); os._exit(0)\n        n += 1\nexcept OSError:\n    print(n)",
    ]);
    assert_eq!(bomb["status"], "ok", "{bomb}");
    assert_eq!(bomb["cgroup"]["attach"], "prewarmed");
    let forked: u64 = bomb["stdout"].as_str().unwrap().trim().parse().unwrap();
    // pids.max is 64 for the run (65 with the stub): python and its children stay under it.
    assert!(forked < 64, "{forked} forks");
    // Closing stdin ends the launcher: the Sandbox is dropped, the stub and its cgroup go.
    drop(warm.child.stdin.take());
    assert!(warm.child.wait().unwrap().success());
    assert_eq!(run_cgroups_of(&launchers), Vec::<PathBuf>::new());
    let uid: BTreeSet<u32> = [host_uid_of_launcher(launcher)].into();
    assert_eq!(processes_of(&uid), vec![]);
}

#[test]
fn a_killed_prewarming_launcher_leaves_nothing_behind() {
    let _g = setup!();
    if !require("cgroup", is_v1(), "pre-warming is for cgroup v1 hosts") {
        return;
    }
    let mut warm = Warm::start();
    let launcher = warm.child.id();
    let launchers: BTreeSet<u32> = [launcher].into();
    let r = warm.run(&["true"]);
    assert_eq!(r["status"], "ok", "{r}");
    await_run_names(&launchers, 1, "after the first run");
    let stub_cgroups = run_cgroups_of(&launchers);
    // The stub moves itself in after its fork; wait until it is there.
    let deadline = Instant::now() + Duration::from_secs(2);
    let stub: i32 = loop {
        let procs = std::fs::read_to_string(stub_cgroups[0].join("cgroup.procs")).unwrap();
        if let Ok(pid) = procs.trim().parse() {
            break pid;
        }
        assert!(Instant::now() < deadline, "no stub moved into its cgroup");
        std::thread::sleep(Duration::from_millis(10));
    };
    warm.child.kill().unwrap();
    warm.child.wait().unwrap();
    // The stub dies with its launcher (PDEATHSIG) ...
    let deadline = Instant::now() + Duration::from_secs(2);
    while nix::sys::signal::kill(nix::unistd::Pid::from_raw(stub), None).is_ok()
        && std::fs::read_to_string(format!("/proc/{stub}/stat")).is_ok_and(|s| !s.contains(") Z "))
    {
        assert!(Instant::now() < deadline, "the stub outlived its launcher");
        std::thread::sleep(Duration::from_millis(10));
    }
    // ... and the next kakoi sweeps the cgroup it was waiting in.
    let (r, _) = exec_json(&[], &["true"]);
    assert_eq!(r.status, Status::Ok);
    assert_eq!(run_cgroups_of(&launchers), Vec::<PathBuf>::new());
}

#[test]
fn a_prewarmed_run_filling_tmpfs_is_oom_not_a_dead_stub() {
    let _g = setup!();
    if !require("cgroup", is_v1(), "pre-warming is for cgroup v1 hosts") {
        return;
    }
    let mut warm = Warm::start();
    std::thread::sleep(Duration::from_millis(300));
    // Memory in tmpfs files counts in no process's RSS, so the stub (a copy of the launcher)
    // would be the cgroup's largest task if it had not opted out of the OOM killer.
    let r = warm.run_request(serde_json::json!({
        "argv": ["sh", "-c", "i=0; while :; do head -c 4000000 /dev/zero > /tmp/f$i; i=$((i+1)); done"],
        "limits": {"memory": 48 << 20, "tmp_size": 256 << 20, "timeout": 20.0},
    }));
    assert_eq!(r["cgroup"]["attach"], "prewarmed", "{r}");
    assert_eq!(r["status"], "oom", "{r}");
    assert_eq!(r["oom_killed"], true, "{r}");
    drop(warm.child.stdin.take());
    assert!(warm.child.wait().unwrap().success());
}
