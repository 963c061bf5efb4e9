//! Packaging: the top-level `Dockerfile` and `docker-compose.yml`, tested for real.
//!
//! 1. Build the runner image (stage 1 copies this test's kakoi binary, stage 2 is the runtime)
//!    on the locally debootstrapped base (`kakoi docker base-image`); the image is tagged by a
//!    hash of the Dockerfile, the binary and the base, so an unchanged build is reused (and
//!    earlier test images are removed).
//! 2. Measure the privileges: `kakoi exec` in the image with exactly the compose settings
//!    gets every isolation layer and its memory limit (oom); taking away any one of them (each
//!    added syscall of the seccomp profile, the unmasked /proc, the delegated cgroup; for a
//!    root runner SETUID or SETGID) loses a layer or fails the run at the step that needs it.
//! 3. Start `docker-compose up` (Debian's docker-compose 1.29) with the repository's compose
//!    file under a unique project name and a unique delegated cgroup tree (`KAKOI_CGROUP`),
//!    send `POST /run` with a main.py over the published loopback port, and check the sandbox
//!    inside the container still has every layer, a memory limit ends in `oom`, a bad request
//!    gets a 400 naming the value; `kakoi doctor` in the container agrees. Then
//!    `docker-compose down -v`: no container, network or volume is left, no run cgroup is left,
//!    and the delegated cgroup tree is removed from every hierarchy — on every path, a failed
//!    assertion included ([`Teardown`]); what a killed earlier run left (its names carry its
//!    pid) is swept before the test starts.
//!
//! Needs root (the delegated cgroups), the native sandbox's capabilities, and `docker`: an
//! engine, docker-compose, and the `kakoi-systempaths` runtime (`docker/start-engine.sh`).

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kakoi::{RunResult, Status};
use serde_json::Value;

const RUNTIME: &str = "kakoi-systempaths";
const IMAGE_REPO: &str = "kakoi-runner-test";
/// The syscalls docker/seccomp/derive.py adds to Docker's default profile.
const ADDED_SYSCALLS: [&str; 7] = [
    "clone",
    "mount",
    "mount_setattr",
    "pivot_root",
    "sethostname",
    "umount2",
    "unshare",
];
const CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "cpuacct"];
/// Marks the containers this test starts with `docker run` (value: the test's cgroup name).
const LABEL: &str = "org.kakoi.test.compose";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn docker(args: &[&str]) -> Command {
    let mut c = Command::new("docker");
    c.args(args);
    c
}

/// Why this test cannot run here, if it cannot.
fn missing() -> Option<String> {
    let info = Command::new("docker")
        .args(["info", "--format", "{{json .Runtimes}}"])
        .output();
    match info {
        Ok(out) if out.status.success() => {
            if !String::from_utf8_lossy(&out.stdout).contains(RUNTIME) {
                return Some(format!(
                    "the engine has no {RUNTIME} runtime (run docker/start-engine.sh as root)"
                ));
            }
        }
        _ => return Some("no Docker engine answers (docker/start-engine.sh)".into()),
    }
    match Command::new("docker-compose").arg("version").output() {
        Ok(out) if out.status.success() => {}
        _ => {
            return Some("docker-compose is not installed (apt-get install docker-compose)".into());
        }
    }
    if !Path::new("/sys/fs/cgroup/memory").is_dir() {
        return Some(
            "this test covers the cgroup v1 layout (docker-compose.yml); the host has none".into(),
        );
    }
    None
}

macro_rules! setup {
    () => {{
        let guard = serial();
        if !sandbox_available() {
            return;
        }
        let missing = missing();
        if !require(
            "docker",
            missing.is_none(),
            missing.as_deref().unwrap_or_default(),
        ) {
            return;
        }
        Teardown::sweep_stale();
        guard
    }};
}

/// Build (or reuse) the runner image from the repository's Dockerfile with this test's kakoi
/// binary (`KAKOI_PREBUILT`) on the local base. Returns its tag.
fn runner_image() -> String {
    let base = ok(kakoi().args(["docker", "base-image"]));
    let base = base.trim().to_owned();
    assert!(base.starts_with("kakoi-base:"), "{base}");
    let context = scratch();
    let dockerfile = repo().join("Dockerfile");
    std::fs::copy(&dockerfile, context.path().join("Dockerfile")).unwrap();
    let binary = context.path().join("kakoi");
    // Debug info is most of a test build's size; the image does not need it.
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(&binary)
        .arg(env!("CARGO_BIN_EXE_kakoi"))
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(env!("CARGO_BIN_EXE_kakoi"), &binary).unwrap();
    }
    let tag = {
        use sha2::{Digest as _, Sha256};
        let mut h = Sha256::new();
        h.update(std::fs::read(&dockerfile).unwrap());
        h.update(std::fs::read(env!("CARGO_BIN_EXE_kakoi")).unwrap());
        h.update(base.as_bytes());
        let digest: String = h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{IMAGE_REPO}:{digest}")
    };
    // Earlier test images are of other builds: remove them.
    let listed = ok(&mut docker(&[
        "images",
        IMAGE_REPO,
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ]));
    for old in listed.lines().filter(|t| *t != tag) {
        let _ = run(&mut docker(&["rmi", old]));
    }
    if run(&mut docker(&["image", "inspect", &tag]))
        .status
        .success()
    {
        eprintln!("reusing {tag}");
        return tag;
    }
    let started = Instant::now();
    let mut build = docker(&["build", "-q", "--network", "host"]);
    build
        .env("DOCKER_BUILDKIT", "0")
        .args(["--build-arg", &format!("BUILDER_IMAGE={base}")])
        .args(["--build-arg", &format!("RUNTIME_IMAGE={base}")])
        .args(["--build-arg", "KAKOI_PREBUILT=kakoi"])
        .args(["-t", &tag])
        .arg(context.path());
    ok(&mut build);
    eprintln!("built {tag} in {:?}", started.elapsed());
    tag
}

/// `kakoi exec --json ARGS` in a fresh container of `image` with `flags`; `None` when kakoi
/// printed no result (it could not even launch).
fn exec_in(image: &str, flags: &[String], args: &[&str]) -> (Option<RunResult>, String) {
    let mut c = docker(&["run", "--rm"]);
    c.args(flags)
        .arg(image)
        .args(["kakoi", "exec", "--json"])
        .args(args);
    let out = run(&mut c);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (serde_json::from_slice(&out.stdout).ok(), stderr)
}

/// The settings of docker-compose.yml as `docker run` flags (the delegated cgroup tree
/// `cgroup`), less what `without` names.
fn settings(cgroup: &str, profile: &Path, without: &str) -> Vec<String> {
    let mut flags: Vec<String> = vec![
        "--label".into(),
        format!("{LABEL}={cgroup}"),
        "--cap-drop".into(),
        "ALL".into(),
    ];
    if without.starts_with("root") {
        flags.extend(["--user".into(), "0:0".into()]);
        for cap in ["SETUID", "SETGID"] {
            if without != format!("root-without-{cap}") {
                flags.extend(["--cap-add".into(), cap.into()]);
            }
        }
    }
    flags.extend([
        "--security-opt".into(),
        format!("seccomp={}", profile.display()),
        "--security-opt".into(),
        "no-new-privileges".into(),
    ]);
    if without != "systempaths" {
        flags.extend(["--security-opt".into(), "systempaths=unconfined".into()]);
    }
    flags.extend(["--cgroup-parent".into(), format!("/{cgroup}")]);
    if without != "cgroup" {
        for c in CONTROLLERS {
            flags.extend([
                "-v".into(),
                format!("/sys/fs/cgroup/{c}/{cgroup}/sandboxes:/sys/fs/cgroup/{c}"),
            ]);
        }
    }
    flags
}

/// docker/seccomp/kakoi-runner.json without one of kakoi's additions.
fn profile_without(dir: &Path, syscall: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("docker/seccomp/kakoi-runner.json")).unwrap();
    let mut profile: Value = serde_json::from_str(&text).unwrap();
    let rules = profile["syscalls"].as_array_mut().unwrap();
    let kakoi = rules
        .iter_mut()
        .find(|r| {
            r["comment"]
                .as_str()
                .is_some_and(|c| c.starts_with("kakoi:"))
        })
        .expect("the kakoi rule");
    let names = kakoi["names"].as_array_mut().unwrap();
    let before = names.len();
    names.retain(|n| n != syscall);
    assert_eq!(
        names.len(),
        before - 1,
        "{syscall} is not in the kakoi rule"
    );
    let path = dir.join(format!("without-{syscall}.json"));
    std::fs::write(&path, serde_json::to_vec(&profile).unwrap()).unwrap();
    path
}

/// Every layer, as the result reports it.
fn assert_every_layer(r: &RunResult, what: &str) {
    let iso = &r.isolation;
    let ns: BTreeSet<&str> = iso.namespaces.iter().map(String::as_str).collect();
    assert_eq!(
        ns,
        BTreeSet::from(["user", "pid", "net", "mount", "ipc", "uts", "cgroup"]),
        "{what}: namespaces"
    );
    assert_eq!(iso.cgroup.version, "v1", "{what}: {:?}", iso.cgroup);
    for c in ["memory", "pids", "cpu"] {
        assert!(
            iso.cgroup.controllers.iter().any(|x| x == c),
            "{what}: {:?}",
            iso.cgroup
        );
    }
    assert!(iso.cgroup.reason.is_none(), "{what}: {:?}", iso.cgroup);
    assert!(iso.rlimit_fallbacks.is_empty(), "{what}");
    assert!(iso.seccomp.is_some(), "{what}: no seccomp");
    let landlock = iso.landlock.as_ref().expect("landlock");
    assert_eq!(landlock["status"], "fully_enforced", "{what}: {landlock}");
    assert!(iso.capabilities.is_empty() && iso.no_new_privs, "{what}");
    assert_eq!((iso.uid, iso.gid), (1000, 1000), "{what}");
}

/// Everything the test makes outside itself, removed on every path (also when it panics):
/// the containers it ran, the compose project (containers, network, volume), the delegated
/// cgroup tree (in every hierarchy: Docker makes the cgroup parent in all of them) and the
/// untagged build-stage image the classic builder keeps. The runner image itself stays, as a
/// cache keyed by the Dockerfile, the binary and the base (earlier ones are removed).
struct Teardown {
    /// The delegated cgroup tree's name (`docker/cgroup-delegate.sh --name`).
    cgroup: String,
    /// The compose project's name.
    project: String,
    /// Environment of every docker-compose call.
    env: Vec<(String, String)>,
    done: bool,
}

impl Teardown {
    /// Whether `name` (`itest-compose-<pid>-<n>`, from [`unique`]) belongs to a test process
    /// that is gone (killed before its teardown ran).
    fn is_stale(name: &str) -> bool {
        let Some(rest) = name.strip_prefix("itest-compose-") else {
            return false;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        pid.parse::<u32>().is_ok_and(|pid| {
            pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
        })
    }

    /// Tear down what an earlier, killed run of this test left: its `docker run` containers,
    /// compose projects and delegated cgroup trees.
    fn sweep_stale() {
        let mut names = BTreeSet::new();
        let format = format!("{{{{.Label \"{LABEL}\"}}}}");
        let out = run(&mut docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label={LABEL}"),
            "--format",
            &format,
        ]));
        names.extend(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_owned),
        );
        let project = "{{.Label \"com.docker.compose.project\"}}";
        for what in [&["ps", "-a"][..], &["network", "ls"], &["volume", "ls"]] {
            let mut args = what.to_vec();
            args.extend([
                "--filter",
                "label=com.docker.compose.project",
                "--format",
                project,
            ]);
            let out = run(&mut docker(&args));
            names.extend(
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(str::to_owned),
            );
        }
        for top in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            for entry in std::fs::read_dir(top.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                names.insert(entry.file_name().to_string_lossy().into_owned());
            }
        }
        for name in names.into_iter().filter(|n| Self::is_stale(n)) {
            let mut stale = Teardown {
                cgroup: name.clone(),
                project: name.clone(),
                env: vec![("KAKOI_CGROUP".into(), name.clone())],
                done: false,
            };
            let left = stale.finish();
            eprintln!("removed the leftovers of an earlier run ({name}); still there: {left:?}");
        }
    }

    fn new() -> Teardown {
        let name = unique("compose").replace(['.', '_'], "-");
        Teardown {
            cgroup: name.clone(),
            project: name.clone(),
            env: vec![("KAKOI_CGROUP".into(), name)],
            done: false,
        }
    }

    fn delegate(&self, uid: &str) {
        ok(
            Command::new(repo().join("docker/cgroup-delegate.sh")).args([
                "--name",
                &self.cgroup,
                "--uid",
                uid,
            ]),
        );
    }

    fn compose(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker-compose");
        c.current_dir(repo())
            .args(["-p", &self.project, "-f", "docker-compose.yml"])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    }

    /// Tear down; what could not be removed, or was left.
    fn finish(&mut self) -> Vec<String> {
        self.done = true;
        let mut left = Vec::new();
        let label = format!("label={LABEL}={}", self.cgroup);
        let ids = run(&mut docker(&["ps", "-a", "-q", "--filter", &label]));
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            left.push(format!("container {id} of docker run"));
            let _ = run(&mut docker(&["rm", "-f", id]));
        }
        let down = run(&mut self.compose(&["down", "-v", "--remove-orphans", "-t", "20"]));
        if !down.status.success() {
            left.push(format!(
                "docker-compose down failed: {}",
                String::from_utf8_lossy(&down.stderr)
            ));
        }
        let label = format!("label=com.docker.compose.project={}", self.project);
        for what in ["container", "network", "volume"] {
            let mut args = vec![what, "ls", "-q", "--filter", &label];
            if what == "container" {
                args.push("-a");
            }
            let out = run(&mut docker(&args));
            let out = String::from_utf8_lossy(&out.stdout);
            left.extend(out.split_whitespace().map(|id| format!("{what} {id}")));
        }
        // The runs' own cgroups (under kakoi's base `kakoi`) must be gone already: each run,
        // and each launcher's pre-warmed one, removes its own.
        for c in CONTROLLERS {
            let dir = PathBuf::from(format!(
                "/sys/fs/cgroup/{c}/{}/sandboxes/kakoi",
                self.cgroup
            ));
            for sub in tree(&dir, 4) {
                if sub.is_dir() {
                    left.push(format!("run cgroup {}", sub.display()));
                }
            }
        }
        let removed = run(
            Command::new(repo().join("docker/cgroup-delegate.sh")).args([
                "--name",
                &self.cgroup,
                "--remove",
            ]),
        );
        if !removed.status.success() {
            left.push(String::from_utf8_lossy(&removed.stderr).trim().to_owned());
        }
        for top in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten() {
            let tree = top.unwrap().path().join(&self.cgroup);
            if tree.exists() {
                left.push(format!("cgroup {}", tree.display()));
            }
        }
        let _ = run(&mut docker(&[
            "image",
            "prune",
            "-f",
            "--filter",
            "label=org.kakoi.stage=build",
        ]));
        left
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if !self.done {
            let left = self.finish();
            if !left.is_empty() {
                eprintln!("teardown after a failure left: {left:?}");
            }
        }
    }
}

/// `GET` or `POST` (with a JSON body) on the published port; `(status, body)`.
fn http(url: &str, json: Option<&Value>) -> Result<(u16, String), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .into();
    let response = match json {
        None => agent.get(url).call(),
        Some(body) => agent
            .post(url)
            .header("content-type", "application/json")
            .send(serde_json::to_vec(body).unwrap()),
    };
    let mut response = response.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok((status, body))
}

fn post_run(base: &str, body: Value) -> RunResult {
    let (status, text) = http(&format!("{base}/run"), Some(&body)).expect("POST /run");
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn packaged_runner_keeps_every_layer_with_the_fewest_privileges() {
    let _g = setup!();
    let mut teardown = Teardown::new();
    let cgroup = teardown.cgroup.clone();
    teardown.delegate("10000");
    let image = runner_image();
    let scratch = scratch();
    let full = repo().join("docker/seccomp/kakoi-runner.json");
    let compose = |without: &str| settings(&cgroup, &full, without);

    // With exactly the compose settings: every layer, limits enforced.
    let (r, err) = exec_in(&image, &compose(""), &["--", "python3", "-c", "print(1)"]);
    let r = r.unwrap_or_else(|| panic!("no result: {err}"));
    assert_eq!(r.status, Status::Ok, "{r:#?}");
    assert_every_layer(&r, "compose settings");
    assert_eq!(r.isolation.host_uid, 10000);
    let (r, _) = exec_in(
        &image,
        &compose(""),
        &[
            "--memory",
            "64M",
            "--",
            "python3",
            "-c",
            "x = b'x' * (200 << 20)",
        ],
    );
    let r = r.expect("result");
    assert_eq!(r.status, Status::Oom, "{r:#?}");
    // A root runner with only SETUID and SETGID (and the subtree delegated to root; without
    // DAC_OVERRIDE root cannot write uid 10000's cgroups): every layer too.
    teardown.delegate("0");
    let (r, err) = exec_in(&image, &compose("root"), &["--", "true"]);
    let r = r.unwrap_or_else(|| panic!("root runner: {err}"));
    assert_every_layer(&r, "root runner");
    assert!(r.isolation.host_uid >= HOST_ID_BASE);
    for cap in ["SETUID", "SETGID"] {
        let (r, err) = exec_in(
            &image,
            &compose(&format!("root-without-{cap}")),
            &["--", "true"],
        );
        assert!(r.is_none(), "root runner without {cap}: {r:#?}");
        assert!(err.contains("_map"), "root runner without {cap}: {err}");
    }
    teardown.delegate("10000");

    // Each privilege taken away in turn.
    for syscall in ADDED_SYSCALLS {
        let profile = profile_without(scratch.path(), syscall);
        let (r, err) = exec_in(&image, &settings(&cgroup, &profile, ""), &["--", "true"]);
        match r {
            Some(r) => {
                assert_eq!(r.status, Status::SetupError, "without {syscall}: {r:#?}");
                let e = r.error.expect("error");
                assert_eq!(e.errno_name, "EPERM", "without {syscall}: {e:?}");
                eprintln!("without {syscall}: fails at {} ({})", e.stage, e.message);
            }
            None => {
                // clone: kakoi cannot even start the child.
                assert!(err.contains("EPERM"), "without {syscall}: {err}");
                eprintln!("without {syscall}: {}", err.lines().last().unwrap_or(""));
            }
        }
    }
    let (r, _) = exec_in(&image, &compose("systempaths"), &["--", "true"]);
    let r = r.expect("result");
    let e = r.error.expect("a masked /proc fails the run");
    assert_eq!(
        (e.stage.as_str(), e.errno_name.as_str()),
        ("rootfs", "EPERM")
    );
    assert!(e.message.contains("/proc"), "{}", e.message);
    let (r, _) = exec_in(&image, &compose("cgroup"), &["--", "true"]);
    let r = r.expect("result");
    assert_eq!(r.status, Status::Ok);
    assert_eq!(
        r.isolation.cgroup.version, "none",
        "{:?}",
        r.isolation.cgroup
    );
    assert!(!r.isolation.rlimit_fallbacks.is_empty());

    // docker-compose up with the repository's compose file.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    teardown.env.extend([
        ("KAKOI_IMAGE".into(), image.clone()),
        ("KAKOI_PORT".into(), port.to_string()),
    ]);
    ok(&mut teardown.compose(&["up", "-d", "--no-build"]));
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match http(&format!("{base}/health"), None) {
            Ok((200, _)) => break,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(250)),
            other => {
                let logs = run(&mut teardown.compose(&["logs", "--tail", "50"]));
                panic!(
                    "kakoi serve did not come up: {other:?}\n{}",
                    String::from_utf8_lossy(&logs.stdout)
                );
            }
        }
    }
    let main = "import os\n\
                status = open('/proc/self/status').read()\n\
                cap = [l.split()[1] for l in status.splitlines() if l.startswith('CapEff')][0]\n\
                print(os.getuid(), os.getgid(), cap, os.uname().nodename)\n";
    let r = post_run(&base, serde_json::json!({ "code": main }));
    assert_eq!(r.status, Status::Ok, "{r:#?}");
    let fields: Vec<&str> = r.stdout.split_whitespace().collect();
    assert_eq!(fields, ["1000", "1000", "0000000000000000", "sandbox"]);
    assert_every_layer(&r, "POST /run in the compose container");
    // The memory limit is a cgroup's, inside the container too.
    let r = post_run(
        &base,
        serde_json::json!({
            "code": "x = b'x' * (200 << 20)\nprint(len(x))",
            "memory": "64M",
        }),
    );
    assert_eq!(r.status, Status::Oom, "{r:#?}");
    // A bad request: a clear error naming the value, and the server keeps serving.
    let (status, text) = http(
        &format!("{base}/run"),
        Some(&serde_json::json!({ "code": "print(1)", "memory": "lots" })),
    )
    .expect("POST /run");
    assert_eq!(status, 400, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(body["error"]["code"], "bad_request", "{body:#}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("lots"), "{body:#}");
    let (status, text) = http(&format!("{base}/run"), Some(&serde_json::json!({}))).unwrap();
    assert!((400..500).contains(&status), "{status}: {text}");
    assert!(text.contains("code"), "{text}");
    let r = post_run(&base, serde_json::json!({ "code": "print(6 * 7)" }));
    assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, "42\n"));
    // kakoi doctor in the container: a run can start, with every layer.
    let doctor = ok(&mut teardown.compose(&["exec", "-T", "kakoi", "kakoi", "doctor", "--json"]));
    let doctor: Value = serde_json::from_str(&doctor).unwrap();
    assert_eq!(doctor["run_can_start"], true, "{doctor:#}");
    for layer in doctor["layers"].as_array().unwrap() {
        assert_eq!(layer["available"], true, "doctor in the container: {layer}");
    }
    assert_eq!(doctor["container"]["likely"], true);

    // Down: nothing of the project is left, and the delegated cgroups are removed.
    let left = teardown.finish();
    assert!(left.is_empty(), "left after down: {left:#?}");
}
