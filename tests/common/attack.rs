//! The escape suite's helpers: compile the attack fixtures (`tests/fixtures/escape`) with the
//! host's gcc, run them inside the sandbox through the `kakoi` binary (`--json`), parse their
//! `KEY RESULT` lines, and check after every run that nothing of it is left on the host.

use std::collections::BTreeSet;
use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kakoi::{RunResult, Status};

use super::{host_uid_of_launcher, require, run_cgroups_of, sandbox_available, wait_gone};

/// Where the fixture directory is bound (read-only) inside the sandbox.
pub const MOUNT: &str = "/opt/escape";
/// The C attack program inside the sandbox.
pub const ATTACKS: &str = "/opt/escape/attacks";
/// The Python attack program inside the sandbox.
pub const ATTACKS_PY: &str = "/opt/escape/attacks.py";
/// The syscall probe inside the sandbox.
pub const TRY_SYSCALL: &str = "/opt/escape/try_syscall";

/// C fixtures: (source, output, extra gcc flags).
const C_PROGRAMS: &[(&str, &str, &[&str])] = &[
    ("attacks.c", "attacks", &["-pthread"]),
    ("try_syscall.c", "try_syscall", &[]),
    ("whoami.c", "whoami", &[]),
    ("reveal.c", "reveal.so", &["-shared", "-fPIC"]),
];
/// Fixtures copied as they are.
const COPIED: &[&str] = &["attacks.py"];

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/escape")
}

fn seccomp_missing() -> Option<String> {
    match std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail") {
        Ok(a) if a.contains("kill_process") && a.contains("user_notif") => None,
        Ok(a) => Some(format!(
            "seccomp lacks kill_process/user_notif (have: {})",
            a.trim()
        )),
        Err(e) => Some(format!(
            "seccomp unavailable: /proc/sys/kernel/seccomp/actions_avail: {e}"
        )),
    }
}

fn landlock_missing() -> Option<String> {
    match kakoi::sandbox::landlock::kernel_abi() {
        Ok(abi) if abi >= 6 => None,
        Ok(abi) => Some(format!(
            "landlock ABI {abi} < 6 (the suite checks IPC scoping)"
        )),
        Err(errno) => Some(format!("landlock unavailable: {errno}")),
    }
}

fn gcc_missing() -> Option<String> {
    match Command::new("gcc").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("gcc --version failed: {:?}", o.status)),
        Err(e) => Some(format!("gcc not runnable: {e}")),
    }
}

/// The gate of every escape test: root, user namespaces, cgroups, seccomp with user
/// notification, Landlock ABI 6 and gcc. Prints `SKIP:` (or fails under `KAKOI_TEST_REQUIRE`).
pub fn available() -> bool {
    sandbox_available()
        && require(
            "seccomp",
            seccomp_missing().is_none(),
            &seccomp_missing().unwrap_or_default(),
        )
        && require(
            "landlock",
            landlock_missing().is_none(),
            &landlock_missing().unwrap_or_default(),
        )
        && require(
            "gcc",
            gcc_missing().is_none(),
            &gcc_missing().unwrap_or_default(),
        )
}

/// The host directory bound at [`MOUNT`]: compiled once per source version (the name carries
/// a hash of the sources), built in a temporary directory and renamed into place, so
/// concurrent test binaries never see a half-built one.
pub fn fixture_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(build_fixtures)
}

fn build_fixtures() -> PathBuf {
    let src = source_dir();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut names: Vec<&str> = C_PROGRAMS.iter().map(|p| p.0).collect();
    names.extend_from_slice(COPIED);
    for name in &names {
        name.hash(&mut hasher);
        std::fs::read(src.join(name))
            .unwrap_or_else(|e| panic!("read fixture {name}: {e}"))
            .hash(&mut hasher);
    }
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = base.join(format!("escape-fixtures-{:016x}", hasher.finish()));
    if dir.join("ready").exists() {
        return dir;
    }
    let staging = tempfile::Builder::new()
        .prefix("escape-fixtures-staging-")
        .tempdir_in(&base)
        .expect("staging dir for the escape fixtures");
    for (source, output, flags) in C_PROGRAMS {
        let out = Command::new("gcc")
            .args(["-O1", "-Wall", "-o"])
            .arg(staging.path().join(output))
            .arg(src.join(source))
            .args(*flags)
            .output()
            .expect("spawn gcc");
        assert!(
            out.status.success(),
            "gcc {source} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for name in COPIED {
        std::fs::copy(src.join(name), staging.path().join(name)).expect("copy fixture");
    }
    // The setuid test's target: owned by root (we are root), mode 4755.
    use std::os::unix::fs::PermissionsExt as _;
    let whoami = staging.path().join("whoami");
    std::fs::set_permissions(&whoami, std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(staging.path().join("ready"), "").unwrap();
    let staging = staging.keep();
    if std::fs::rename(&staging, &dir).is_err() {
        // Another test binary won the race; use its copy.
        let _ = std::fs::remove_dir_all(&staging);
        assert!(dir.join("ready").exists(), "{} not built", dir.display());
    }
    dir
}

/// One finished attack run.
#[derive(Debug)]
pub struct Attack {
    /// The attack's name (for messages).
    pub name: String,
    /// The parsed `--json` result.
    pub result: RunResult,
    /// pid of the `kakoi` launcher (its sandbox maps uid 1000 to a uid derived from it).
    pub launcher: u32,
    /// `KEY RESULT` lines of stdout, in order.
    pub lines: Vec<(String, String)>,
}

/// A launched attack that has not been waited for (for runs that must overlap).
pub struct Pending {
    name: String,
    child: Child,
}

/// `kakoi exec --json --bind-ro FIXTURES:/opt/escape FLAGS -- ARGV`, not waited for.
pub fn spawn(name: &str, flags: &[&str], argv: &[&str]) -> Pending {
    let bind = format!("{}:{MOUNT}", fixture_dir().display());
    let child = Command::new(env!("CARGO_BIN_EXE_kakoi"))
        .args(["exec", "--json", "--bind-ro", &bind])
        .args(flags)
        .arg("--")
        .args(argv)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kakoi");
    Pending {
        name: name.to_owned(),
        child,
    }
}

impl Pending {
    /// pid of the launcher.
    pub fn launcher(&self) -> u32 {
        self.child.id()
    }

    /// Wait for the run, parse it, and check nothing of it is left on the host.
    pub fn finish(self) -> Attack {
        let launcher = self.child.id();
        let out = self.child.wait_with_output().expect("wait for kakoi");
        let result: RunResult = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{}: kakoi did not print one JSON result ({e}); exit {:?}\nstdout: {}\nstderr: {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let lines = result
            .stdout
            .lines()
            .map(|l| {
                let (k, v) = l.split_once(' ').unwrap_or((l, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        let attack = Attack {
            name: self.name,
            result,
            launcher,
            lines,
        };
        attack.assert_nothing_left();
        attack
    }
}

/// Run one attack to completion (see [`spawn`]).
pub fn run(name: &str, flags: &[&str], argv: &[&str]) -> Attack {
    spawn(name, flags, argv).finish()
}

/// Run the C attack program with a subcommand.
pub fn c(name: &str, flags: &[&str], args: &[&str]) -> Attack {
    let mut argv = vec![ATTACKS];
    argv.extend_from_slice(args);
    run(name, flags, &argv)
}

/// Run the Python attack program with a subcommand.
pub fn py(name: &str, flags: &[&str], args: &[&str]) -> Attack {
    let mut argv = vec!["python3", ATTACKS_PY];
    argv.extend_from_slice(args);
    run(name, flags, &argv)
}

impl Attack {
    /// Every process of the run is gone and its cgroup removed.
    fn assert_nothing_left(&self) {
        let uid = host_uid_of_launcher(self.launcher);
        let left = wait_gone(&BTreeSet::from([uid]), Duration::from_secs(5));
        assert!(
            left.is_empty(),
            "{}: processes of the sandbox outlived the run: {left:?}",
            self.name
        );
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let cgroups = run_cgroups_of(&BTreeSet::from([self.launcher]));
            if cgroups.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: run cgroups left behind: {cgroups:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The value of the first line with `key`; panics (with the whole output) when missing.
    pub fn get(&self, key: &str) -> &str {
        self.lines
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{}: no line {key:?}\n{}", self.name, self.dump()))
    }

    /// The value of the first line with `key`, if any.
    pub fn find(&self, key: &str) -> Option<&str> {
        self.lines
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `key` has exactly `value`.
    pub fn expect(&self, key: &str, value: &str) {
        let got = self.get(key);
        assert_eq!(
            got,
            value,
            "{}: {key} is {got:?}, expected {value:?}\n{}",
            self.name,
            self.dump()
        );
    }

    /// `key` failed with one of `errnos`.
    pub fn expect_errno(&self, key: &str, errnos: &[&str]) {
        let got = self.get(key);
        assert!(
            errnos.contains(&got),
            "{}: {key} gave {got:?}, expected one of {errnos:?}\n{}",
            self.name,
            self.dump()
        );
    }

    /// `key` succeeded.
    pub fn expect_ok(&self, key: &str) {
        let got = self.get(key);
        assert!(
            got == "ok" || got.starts_with("ok:"),
            "{}: {key} gave {got:?}, expected success\n{}",
            self.name,
            self.dump()
        );
    }

    /// The run ended with `status`.
    pub fn expect_status(&self, status: Status) {
        assert_eq!(
            self.result.status,
            status,
            "{}: status {:?}, expected {status:?}\n{}",
            self.name,
            self.result.status,
            self.dump()
        );
    }

    /// The run was killed for the reported syscall `syscall` before the call returned.
    pub fn expect_reported(&self, syscall: &str) {
        self.expect_status(Status::SeccompViolation);
        assert_eq!(
            self.result.seccomp_syscall.as_deref(),
            Some(syscall),
            "{}: violation reported for {:?}, expected {syscall}\n{}",
            self.name,
            self.result.seccomp_syscall,
            self.dump()
        );
        assert!(
            self.find("returned").is_none(),
            "{}: {syscall} returned to the program\n{}",
            self.name,
            self.dump()
        );
    }

    /// Everything about the run, for failure messages.
    pub fn dump(&self) -> String {
        format!(
            "status {:?} exit {:?} signal {:?} seccomp {:?} oom {} wall {} ms\nstdout:\n{}\nstderr:\n{}",
            self.result.status,
            self.result.exit_code,
            self.result.signal,
            self.result.seccomp_syscall,
            self.result.oom_killed,
            self.result.wall_ms,
            truncate(&self.result.stdout),
            truncate(&self.result.stderr)
        )
    }
}

fn truncate(s: &str) -> &str {
    let end = s.char_indices().nth(4000).map_or(s.len(), |(i, _)| i);
    &s[..end]
}

/// A host scratch directory that a sandbox may write (bound with `--bind-rw` at `/sync`), used
/// to say "ready" to the test and to hear "done" from it.
pub struct Sync {
    dir: tempfile::TempDir,
    /// `--bind-rw HOST:/sync`.
    pub flag: String,
}

impl Sync {
    /// A fresh sync directory, writable by the sandbox user.
    pub fn new() -> Sync {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::Builder::new()
            .prefix("escape-sync-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let flag = format!("{}:/sync", dir.path().display());
        Sync { dir, flag }
    }

    /// Wait until the sandbox wrote `ready` (panics after `within`).
    pub fn wait_ready(&self, what: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.dir.path().join("ready").exists() {
            assert!(Instant::now() < deadline, "{what}: never became ready");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Write `name` with `content` (for the sandbox to read).
    pub fn write(&self, name: &str, content: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, self.dir.path().join(name)).unwrap();
    }

    /// Tell the sandbox to finish.
    pub fn done(&self) {
        std::fs::write(self.dir.path().join("done"), "").unwrap();
    }
}

impl Default for Sync {
    fn default() -> Self {
        Self::new()
    }
}
