//! End-to-end tests of `kakoi serve` over loopback with a real HTTP client (reqwest), and over a
//! unix socket. Each test starts its own server process (`kakoi serve --config <tmp>`), talks
//! to it, and checks on the host what it left: launchers, sandbox processes (by the host uid a
//! launcher maps its sandbox to) and run cgroups (by launcher pid).
//!
//! Servers use the data directory `tests/env.rs` shares (`/var/tmp/kakoi-test-env/shared`,
//! kept between test runs): its toolchain (the pinned uv and ruff, downloaded from PyPI once
//! per machine) is the ruff of the format/lint tests, and every environment is built once
//! per machine. A test that must watch a build happen uses a fresh data directory into which
//! the shared toolchain is copied.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::*;
use kakoi::{RunResult, Status};
use serde_json::{Value, json};

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

/// A `kakoi serve` process.
struct Server {
    child: Child,
    base: String,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Start with this TOML (plus `listen = 127.0.0.1:0` unless the TOML says otherwise).
    fn start(toml: &str) -> Server {
        Server::start_with(toml, &[], &[])
    }

    /// `env` is set for the server; `KAKOI_DATA_DIR` defaults to the shared data directory,
    /// and `KAKOI_RUFF` is unset unless given (ruff comes from the toolchain).
    fn start_with(toml: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("itest-serve-")
            .tempdir()
            .unwrap();
        let config = dir.path().join("kakoi.toml");
        let mut text = String::new();
        if !toml.contains("listen") {
            text.push_str("listen = \"127.0.0.1:0\"\n");
        }
        text.push_str(toml);
        std::fs::write(&config, text).unwrap();
        let mut cmd = kakoi();
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("KAKOI_TOKEN")
            .env_remove("KAKOI_RUFF")
            .env("KAKOI_DATA_DIR", shared_data())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn kakoi serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("kakoi serve: listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("kakoi serve did not start; log:\n{}", log.lock().unwrap());
            }
        };
        Server {
            child,
            base,
            log,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Live launcher processes of this server (children named kakoi).
    fn launchers(&self) -> BTreeSet<u32> {
        children_of(self.pid())
    }

    fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "kakoi serve did not exit within {within:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            signal(self.pid(), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Data directories (shared with tests/env.rs).
// ---------------------------------------------------------------------------------------

const DATA_BASE: &str = "/var/tmp/kakoi-test-env";

fn data_base() -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let base = PathBuf::from(DATA_BASE);
    std::fs::create_dir_all(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    base
}

/// The data directory shared by tests and test runs.
fn shared_data() -> PathBuf {
    data_base();
    PathBuf::from(SHARED_DATA_DIR)
}

/// The shared store's toolchain directory (`.../toolchain/host-uv<V>-ruff<V>-<arch>`),
/// installed once per machine by `kakoi env toolchain`.
fn shared_toolchain() -> PathBuf {
    static READY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    READY
        .get_or_init(|| {
            let out = kakoi()
                .args(["env", "toolchain", "--json", "--quiet", "--data-dir"])
                .arg(shared_data())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "kakoi env toolchain: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
            PathBuf::from(doc["ruff"]["path"].as_str().unwrap())
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .to_path_buf()
        })
        .clone()
}

/// A new, empty data directory with the shared toolchain copied in (no uv cache, no envs):
/// for tests that must see a build happen.
fn fresh_data(tag: &str) -> tempfile::TempDir {
    let tools = shared_toolchain();
    let dir = tempfile::Builder::new()
        .prefix(&format!("server-{tag}-"))
        .tempdir_in(data_base())
        .unwrap();
    let target = dir
        .path()
        .join("toolchain")
        .join(tools.file_name().unwrap());
    std::fs::create_dir_all(target.join("bin")).unwrap();
    for name in ["bin/uv", "bin/ruff", "manifest.json"] {
        std::fs::copy(tools.join(name), target.join(name)).unwrap();
    }
    dir
}

/// Gate + lock for tests that build environments.
macro_rules! setup_pypi {
    () => {{
        let guard = setup!();
        if !pypi_available() {
            return;
        }
        guard
    }};
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// pids whose parent is `parent` (from /proc/*/stat), live only.
fn children_of(parent: u32) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let ppid: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == parent && state != "Z" {
            out.insert(pid);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rfind(')')
                .map(|i| !s[i + 2..].starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

fn uids_of(launchers: &BTreeSet<u32>) -> BTreeSet<u32> {
    launchers.iter().map(|p| host_uid_of_launcher(*p)).collect()
}

/// Wait until none of `launchers` is alive, none of their sandbox processes is alive and none
/// of their run cgroups exists; panic with what is left.
fn assert_all_gone(launchers: &BTreeSet<u32>, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        let live: Vec<u32> = launchers.iter().copied().filter(|p| alive(*p)).collect();
        let procs = processes_of(&uids_of(launchers));
        let cgroups = run_cgroups_of(launchers);
        if live.is_empty() && procs.is_empty() && cgroups.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "{what}: left behind: launchers {live:?}, sandbox processes {procs:?}, cgroups {cgroups:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A client for requests that may build environments (minutes on a cold machine).
fn long_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(900))
        .build()
        .unwrap()
}

async fn post_json(s: &Server, body: Value) -> (u16, Value) {
    let r = client()
        .post(s.url("/run"))
        .json(&body)
        .send()
        .await
        .expect("POST /run");
    let status = r.status().as_u16();
    (status, r.json().await.expect("a JSON body"))
}

fn result_of(status: u16, body: &Value) -> RunResult {
    assert_eq!(status, 200, "expected a result, got {status}: {body:#}");
    serde_json::from_value(body.clone())
        .unwrap_or_else(|e| panic!("not a RunResult ({e}): {body:#}"))
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) -> String {
    assert_eq!(status, want_status, "{body:#}");
    assert_eq!(body["error"]["code"], want_code, "{body:#}");
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!message.is_empty(), "an error needs a message: {body:#}");
    message
}

// ---------------------------------------------------------------------------------------
// Requests that run.
// ---------------------------------------------------------------------------------------

#[test]
fn json_requests_run_with_files_stdin_and_limits() {
    let _g = setup!();
    let s = Server::start("workers = 1\n");
    let rt = runtime();
    let (status, body) = rt.block_on(post_json(
        &s,
        json!({
            "code": "import sys\nprint(open('data/in.txt').read(), sys.stdin.read(), open('raw.bin','rb').read())\nsys.stdout.flush()\nsys.stdout.buffer.write(b'\\xff\\n')\n",
            "files": {"data/in.txt": {"text": "from a file"}, "raw.bin": {"base64": "AAH/"}},
            "stdin": "from stdin",
            "timeout": 5,
            "memory": "128M",
            "pids": 16,
            "cpus": 0.5
        }),
    ));
    let r = result_of(status, &body);
    assert_eq!(r.status, Status::Ok, "{body:#}");
    let out = r.stdout_bytes();
    assert_eq!(
        out,
        b"from a file from stdin b'\\x00\\x01\\xff'\n\xff\n".to_vec(),
        "non-UTF-8 output must come back exactly"
    );
    assert!(body["stdout_base64"].is_string());
    assert_eq!(r.isolation.network, "none");
    assert_eq!(r.backend, "native");
    assert!(r.files.is_empty());
}

#[test]
fn multipart_requests_run_like_a_form_post() {
    let _g = setup!();
    let s = Server::start("workers = 1\n");
    let rt = runtime();
    let form = reqwest::multipart::Form::new()
        .part(
            "main.py",
            reqwest::multipart::Part::bytes(
                b"import sys\nprint(open('data.csv').read().strip(), sys.stdin.read())\n".to_vec(),
            )
            .file_name("main.py"),
        )
        .part(
            "data.csv",
            reqwest::multipart::Part::bytes(b"a,b\n1,2\n".to_vec()).file_name("data.csv"),
        )
        .text("stdin", "piped")
        .text("timeout", "4")
        .text("memory", "64M");
    let r = rt.block_on(async {
        client()
            .post(s.url("/run"))
            .multipart(form)
            .send()
            .await
            .unwrap()
    });
    let status = r.status().as_u16();
    let body: Value = rt.block_on(r.json()).unwrap();
    let r = result_of(status, &body);
    assert_eq!(r.status, Status::Ok, "{body:#}");
    assert_eq!(r.stdout, "a,b\n1,2 piped\n");
}

#[test]
fn crashing_timing_out_and_oom_programs_are_200_with_their_status() {
    let _g = setup!();
    let s = Server::start("workers = 2\n");
    let rt = runtime();
    let cases = [
        (json!({"code": "raise SystemExit(3)"}), Status::RuntimeError),
        (
            json!({"code": "import time\ntime.sleep(30)", "timeout": 0.5}),
            Status::Timeout,
        ),
        (
            json!({"code": "x = bytearray(200 * 1024 * 1024)\nprint(len(x))", "memory": "48M"}),
            Status::Oom,
        ),
        (
            json!({"code": "import os\nos.kill(os.getpid(), 9)"}),
            Status::Signaled,
        ),
    ];
    for (req, want) in cases {
        let (status, body) = rt.block_on(post_json(&s, req.clone()));
        let r = result_of(status, &body);
        assert_eq!(r.status, want, "{req}: {body:#}");
    }
}

#[test]
fn twenty_concurrent_requests_each_get_their_own_result() {
    let _g = setup!();
    let s = Server::start("workers = 2\nqueue = 32\n[max_limits]\ntimeout = 30\n");
    let launchers_before = s.launchers();
    let rt = runtime();
    let started = Instant::now();
    let results = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..20u64 {
            let url = s.url("/run");
            tasks.push(tokio::spawn(async move {
                let body = json!({
                    "code": format!("import sys\nprint({i} * {i}, sys.stdin.read())"),
                    "stdin": format!("req-{i}"),
                    "timeout": 5 + i,
                    "pids": 8 + i,
                });
                let r = client().post(url).json(&body).send().await.unwrap();
                (i, r.status().as_u16(), r.json::<Value>().await.unwrap())
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    for (i, status, body) in results {
        let r = result_of(status, &body);
        assert_eq!(r.status, Status::Ok, "{body:#}");
        assert_eq!(r.stdout, format!("{} req-{i}\n", i * i));
    }
    eprintln!("20 requests on 2 workers: {:?}", started.elapsed());
    assert!(
        s.launchers().len() <= 2,
        "at most `workers` launchers: {:?}",
        s.launchers()
    );
    assert_eq!(s.launchers(), launchers_before, "no launcher was replaced");
    assert!(processes_of(&uids_of(&s.launchers())).is_empty());
    assert!(run_cgroups_of(&s.launchers()).is_empty());
}

#[test]
fn one_launcher_per_run_mode_works() {
    let _g = setup!();
    let s = Server::start("workers = 1\nmax_runs_per_worker = 1\n");
    let rt = runtime();
    let mut host_uids = BTreeSet::new();
    for _ in 0..3 {
        let (status, body) = rt.block_on(post_json(&s, json!({"code": "print('x')"})));
        let r = result_of(status, &body);
        assert_eq!(r.stdout, "x\n");
        host_uids.insert(r.isolation.host_uid);
    }
    assert_eq!(
        host_uids.len(),
        3,
        "each run had its own launcher: {host_uids:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------------------

#[test]
fn bad_requests_get_each_error_code() {
    let _g = setup!();
    let s = Server::start("workers = 1\nmax_upload = \"64K\"\n[max_limits]\ntimeout = 20\n");
    let rt = runtime();
    rt.block_on(async {
        let c = client();
        let (st, b) = post_json(&s, json!({"requirements": "x"})).await;
        assert!(assert_error(st, &b, 400, "bad_request").contains("code"));
        let (st, b) = post_json(&s, json!({"code": "1", "timeout": 21})).await;
        assert!(assert_error(st, &b, 400, "bad_request").contains("maximum of 20"));
        let (st, b) = post_json(&s, json!({"code": "1", "memory": "1G"})).await;
        assert!(assert_error(st, &b, 400, "bad_request").contains("memory"));
        let (st, b) = post_json(&s, json!({"code": "1", "network": true})).await;
        assert!(assert_error(st, &b, 400, "bad_request").contains("network"));
        let (st, b) = post_json(
            &s,
            json!({"code": "1", "files": {"../escape": {"text": "x"}}}),
        )
        .await;
        assert!(assert_error(st, &b, 400, "bad_request").contains("escape"));
        let (st, b) = post_json(
            &s,
            json!({"code": "1", "files": {"main.py": {"text": "x"}}}),
        )
        .await;
        assert!(assert_error(st, &b, 400, "bad_request").contains("main.py"));
        let (st, b) = post_json(&s, json!({"code": "1", "timeout": 0})).await;
        assert_error(st, &b, 400, "bad_request");

        let r = c
            .post(s.url("/run"))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        assert!(assert_error(st, &r.json().await.unwrap(), 400, "bad_request").contains("JSON"));

        let form = reqwest::multipart::Form::new().text("timeout", "1");
        let r = c.post(s.url("/run")).multipart(form).send().await.unwrap();
        let st = r.status().as_u16();
        assert!(assert_error(st, &r.json().await.unwrap(), 400, "bad_request").contains("main.py"));

        let r = c
            .post(s.url("/run"))
            .header("content-type", "text/plain")
            .body("print(1)")
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        assert_error(st, &r.json().await.unwrap(), 415, "unsupported_media_type");
        let r = c.post(s.url("/run")).body("print(1)").send().await.unwrap();
        let st = r.status().as_u16();
        assert_error(st, &r.json().await.unwrap(), 415, "unsupported_media_type");

        let big = "#".repeat(70 * 1024);
        let (st, b) = post_json(&s, json!({ "code": big })).await;
        assert_error(st, &b, 413, "payload_too_large");

        // The docker backend is off unless the operator enables it.
        let (st, b) = post_json(&s, json!({"code": "1", "backend": "docker"})).await;
        assert!(assert_error(st, &b, 400, "bad_request").contains("docker backend is not enabled"));
        let (st, b) = post_json(&s, json!({"code": "1", "backend": "podman"})).await;
        assert!(assert_error(st, &b, 400, "bad_request").contains("unknown variant"));
        let form = reqwest::multipart::Form::new()
            .text("main.py", "print(1)")
            .text("backend", "docker");
        let r = c.post(s.url("/run")).multipart(form).send().await.unwrap();
        let st = r.status().as_u16();
        assert!(
            assert_error(st, &r.json().await.unwrap(), 400, "bad_request")
                .contains("docker backend is not enabled")
        );
        // A bad request is refused before an environment is built for it (this one would
        // be a 422 from uv otherwise).
        let (st, b) = post_json(
            &s,
            json!({"code": "1", "requirements": "kakoi-test-no-such-package-3f9c1e\n",
                   "files": {"/etc/x": {"text": "x"}}}),
        )
        .await;
        assert_error(st, &b, 400, "bad_request");
        // A requirements line that is not a requirement is refused before uv runs.
        let (st, b) = post_json(
            &s,
            json!({"code": "print(1)", "requirements": "--index-url https://example.invalid/\n"}),
        )
        .await;
        assert_error(st, &b, 422, "env_failed");
        assert_eq!(b["error"]["detail"]["stage"], "env-requirements", "{b:#}");
        assert!(
            b["error"]["detail"]["uv"].is_null(),
            "uv did not run: {b:#}"
        );

        let r = c
            .post(s.url("/envs"))
            .json(&json!({"requirements": "# nothing\n"}))
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        assert_error(st, &r.json().await.unwrap(), 400, "bad_request");
        let r = c.post(s.url("/envs")).body("rich").send().await.unwrap();
        let st = r.status().as_u16();
        assert_error(st, &r.json().await.unwrap(), 415, "unsupported_media_type");

        let r = c.get(s.url("/nowhere")).send().await.unwrap();
        let st = r.status().as_u16();
        assert_error(st, &r.json().await.unwrap(), 404, "not_found");
        let r = c.get(s.url("/run")).send().await.unwrap();
        let st = r.status().as_u16();
        assert_error(st, &r.json().await.unwrap(), 405, "method_not_allowed");
    });
    // Requests that could not run left nothing behind either.
    assert!(run_cgroups_of(&s.launchers()).is_empty());
}

/// Send a chunked body of `total` bytes in 16 KiB chunks; returns (status line, bytes sent
/// before the server answered).
fn stream_upload(addr: &str, content_type: &str, total: usize) -> (String, usize) {
    let addr = addr.trim_start_matches("http://");
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();
    write!(
        sock,
        "POST /run HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b'#'; 16 * 1024];
    let mut sent = 0;
    let mut response = Vec::new();
    while sent < total {
        let mut buf = [0u8; 4096];
        match sock.read(&mut buf) {
            Ok(n) if n > 0 => {
                response.extend_from_slice(&buf[..n]);
                break;
            }
            _ => {}
        }
        let frame = [
            format!("{:x}\r\n", chunk.len()).as_bytes(),
            &chunk[..],
            b"\r\n",
        ]
        .concat();
        if sock.write_all(&frame).is_err() {
            break;
        }
        sent += chunk.len();
    }
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&response);
    (text.lines().next().unwrap_or_default().to_owned(), sent)
}

#[test]
fn uploads_over_the_limit_are_refused_while_streaming() {
    let _g = setup!();
    let s = Server::start("workers = 1\nmax_upload = \"256K\"\n");
    let total = 8 << 20;
    for ct in ["application/json", "multipart/form-data; boundary=XyZ"] {
        let (status, sent) = stream_upload(&s.base, ct, total);
        assert!(status.contains(" 413 "), "{ct}: {status:?}");
        assert!(
            sent < total / 4,
            "{ct}: the 413 came only after {sent} of {total} bytes (not while streaming)"
        );
    }
    // A declared Content-Length over the limit is refused before any body is read.
    let mut sock = std::net::TcpStream::connect(s.base.trim_start_matches("http://")).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        sock,
        "POST /run HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 1024];
    let n = sock.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 413"));
}

#[test]
fn a_full_queue_is_429_and_a_long_wait_too() {
    let _g = setup!();
    let s = Server::start("workers = 1\nqueue = 0\n");
    let rt = runtime();
    rt.block_on(async {
        let slow = tokio::spawn(post_json_owned(
            s.url("/run"),
            json!({"code": "import time\ntime.sleep(1.5)\nprint('done')"}),
        ));
        wait_running(&s, 1).await;
        let (st, b) = post_json(&s, json!({"code": "print(1)"})).await;
        assert!(assert_error(st, &b, 429, "queue_full").contains("queue"));
        let (st, b) = slow.await.unwrap();
        assert_eq!(result_of(st, &b).stdout, "done\n");
    });
    drop(s);
    let s = Server::start("workers = 1\nqueue = 4\nqueue_timeout = 0.3\n");
    rt.block_on(async {
        let slow = tokio::spawn(post_json_owned(
            s.url("/run"),
            json!({"code": "import time\ntime.sleep(1.5)\nprint('done')"}),
        ));
        wait_running(&s, 1).await;
        let t = Instant::now();
        let (st, b) = post_json(&s, json!({"code": "print(1)"})).await;
        assert_error(st, &b, 429, "queue_timeout");
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
        let (st, b) = slow.await.unwrap();
        assert_eq!(result_of(st, &b).stdout, "done\n");
    });
}

async fn post_json_owned(url: String, body: Value) -> (u16, Value) {
    let r = client().post(url).json(&body).send().await.unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap())
}

async fn health(s: &Server) -> Value {
    client()
        .get(s.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Wait until `/health` shows `n` running runs and their sandboxes exist.
async fn wait_running(s: &Server, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = health(s).await;
        let sandboxes = processes_of(&uids_of(&s.launchers())).len();
        if h["pool"]["running"].as_u64() == Some(n) && sandboxes >= n as usize {
            // Give the payload a moment to be exec'd past python's start.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return;
        }
        assert!(Instant::now() < deadline, "never {n} running: {h}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Cancellation, shutdown, a killed manager.
// ---------------------------------------------------------------------------------------

#[test]
fn a_client_that_disconnects_gets_its_sandbox_killed_and_the_launcher_stays() {
    let _g = setup!();
    let s = Server::start("workers = 1\n");
    let rt = runtime();
    let launchers = s.launchers();
    assert_eq!(launchers.len(), 1, "{launchers:?}");
    let launcher = *launchers.iter().next().unwrap();
    rt.block_on(async {
        let run = tokio::spawn(post_json_owned(
            s.url("/run"),
            json!({"code": "import subprocess, time\nsubprocess.Popen(['sleep', '60'])\ntime.sleep(60)"}),
        ));
        wait_running(&s, 1).await;
        let sandbox = processes_of(&uids_of(&launchers));
        assert!(sandbox.len() >= 2, "python and its child run: {sandbox:?}");
        assert!(!run_cgroups_of(&launchers).is_empty());
        run.abort(); // the client goes away: its connection closes
        let _ = run.await;
    });
    // The sandbox's processes and cgroup are gone...
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let procs = processes_of(&uids_of(&launchers));
        let cgroups = run_cgroups_of(&launchers);
        if procs.is_empty() && cgroups.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the client left: sandbox processes {procs:?}, cgroups {cgroups:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // ...ended by a `cancel` frame: the launcher killed its own sandbox and stayed alive.
    assert!(
        s.log().contains("run cancelled: sending cancel"),
        "{}",
        s.log()
    );
    assert!(!s.log().contains("killing its launcher"), "{}", s.log());
    assert!(alive(launcher), "the launcher survived the cancel");
    // The same launcher serves the next request (no respawn).
    let (status, body) = rt.block_on(post_json(&s, json!({"code": "print('still here')"})));
    let r = result_of(status, &body);
    assert_eq!(r.stdout, "still here\n");
    assert_eq!(
        r.isolation.host_uid,
        host_uid_of_launcher(launcher),
        "the run went to the launcher that was there before the cancel"
    );
    assert_eq!(s.launchers(), launchers, "no launcher was replaced");
    let h = rt.block_on(health(&s));
    assert_eq!(h["pool"]["running"], 0);
    assert_eq!(h["pool"]["workers"], 1);
    let metrics = rt.block_on(async {
        client()
            .get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert_eq!(metric(&metrics, "kakoi_cancelled_runs"), 1.0, "{metrics}");
}

#[test]
fn sigterm_finishes_short_runs_kills_long_ones_and_removes_everything() {
    let _g = setup!();
    let mut s =
        Server::start("workers = 2\nqueue = 4\ngrace_period = 2\n[max_limits]\ntimeout = 60\n");
    let launchers = s.launchers();
    assert_eq!(launchers.len(), 2);
    let rt = runtime();
    let (short, long, queued, elapsed) = rt.block_on(async {
        let short = tokio::spawn(post_json_owned(
            s.url("/run"),
            json!({"code": "import time\ntime.sleep(1)\nprint('finished')"}),
        ));
        let long = tokio::spawn(post_json_owned(
            s.url("/run"),
            json!({"code": "import time\ntime.sleep(50)", "timeout": 55}),
        ));
        wait_running(&s, 2).await;
        let queued = tokio::spawn(post_json_owned(s.url("/run"), json!({"code": "print(1)"})));
        let deadline = Instant::now() + Duration::from_secs(5);
        while health(&s).await["pool"]["queued"] != 1 {
            assert!(Instant::now() < deadline, "never queued");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let t = Instant::now();
        signal(s.pid(), nix::sys::signal::Signal::SIGTERM);
        let queued = queued.await.unwrap();
        let short = short.await.unwrap();
        let long = long.await.unwrap();
        (short, long, queued, t.elapsed())
    });
    assert_error(queued.0, &queued.1, 503, "shutting_down");
    assert_eq!(result_of(short.0, &short.1).stdout, "finished\n");
    assert_error(long.0, &long.1, 503, "shutting_down");
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_secs(10),
        "the long run was killed at the grace period: {elapsed:?}"
    );
    let status = s.wait(Duration::from_secs(15));
    assert!(status.success(), "{status:?}\n{}", s.log());
    assert_all_gone(&launchers, Duration::from_secs(5), "after shutdown");
}

#[test]
fn a_sigkilled_manager_takes_its_sandboxes_down_and_the_next_start_sweeps() {
    let _g = setup!();
    // Stand in for the host's init: orphans (the dead manager's launchers and their
    // sandboxes' inits) are reparented to this process, which reaps them below, as systemd
    // would. (This VM's pid 1 does not reap promptly, and a zombie launcher looks alive to
    // the stale-cgroup sweep, which keys on pid and start time.)
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let mut s = Server::start("workers = 1\n");
    let launchers = s.launchers();
    let rt = runtime();
    rt.block_on(async {
        let url = s.url("/run");
        let _run = tokio::spawn(async move {
            // The connection dies with the manager; the error is expected.
            let _ = client()
                .post(url)
                .json(&json!({"code": "import time\ntime.sleep(60)"}))
                .send()
                .await;
        });
        wait_running(&s, 1).await;
        assert!(!run_cgroups_of(&launchers).is_empty());
        signal(s.pid(), nix::sys::signal::Signal::SIGKILL);
        s.wait(Duration::from_secs(5));
    });
    // Launchers die of PDEATHSIG, their sandboxes with them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while (launchers.iter().any(|p| alive(*p)) || !processes_of(&uids_of(&launchers)).is_empty())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !launchers.iter().any(|p| alive(*p)),
        "launchers outlived the manager"
    );
    assert!(
        processes_of(&uids_of(&launchers)).is_empty(),
        "sandboxes outlived the manager"
    );
    // Reap the orphans (no other child of this process exists now: tests are serial).
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(-1),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        ) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Ok(_) => {}
            Err(_) => break, // ECHILD: all reaped
        }
    }
    nix::sys::prctl::set_child_subreaper(false).unwrap();
    // The next manager sweeps the stale cgroup (if the dead launcher's was still there).
    let s2 = Server::start("workers = 1\n");
    assert!(
        run_cgroups_of(&launchers).is_empty(),
        "stale cgroups: {:?}",
        run_cgroups_of(&launchers)
    );
    drop(s2);
}

// ---------------------------------------------------------------------------------------
// Auth, unix socket, logs, metrics, OpenAPI.
// ---------------------------------------------------------------------------------------

#[test]
fn a_bearer_token_guards_everything_but_health() {
    let _g = setup!();
    let token = "s3cret-token-for-tests-0123456789";
    let s = Server::start_with("workers = 1\n", &[], &[("KAKOI_TOKEN", token)]);
    let rt = runtime();
    rt.block_on(async {
        let c = client();
        let r = c.get(s.url("/health")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body = json!({"code": "print('authorized')"});
        let r = c.post(s.url("/run")).json(&body).send().await.unwrap();
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        // Refused from the headers with the body unread: the connection is not reused (every
        // error says so).
        assert_eq!(r.headers()["connection"], "close");
        let st = r.status().as_u16();
        assert_error(st, &r.json().await.unwrap(), 401, "unauthorized");
        let r = c
            .post(s.url("/run"))
            .bearer_auth("s3cret-token-for-tests-0123456780")
            .json(&body)
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        assert_error(st, &r.json().await.unwrap(), 401, "unauthorized");
        let r = c.get(s.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let r = c
            .post(s.url("/run"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        // Successes keep the connection.
        assert!(r.headers().get("connection").is_none(), "{:?}", r.headers());
        let st = r.status().as_u16();
        assert_eq!(
            result_of(st, &r.json().await.unwrap()).stdout,
            "authorized\n"
        );
    });
}

/// One HTTP/1.1 request over a unix socket; returns (status, body).
fn unix_request(path: &Path, request: &str) -> (u16, Value) {
    let mut sock = std::os::unix::net::UnixStream::connect(path).unwrap();
    sock.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    sock.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        status,
        serde_json::from_str(body.trim()).unwrap_or(Value::Null),
    )
}

#[test]
fn a_unix_socket_serves_and_a_stale_one_is_replaced() {
    let _g = setup!();
    let dir = scratch();
    let sock = dir.path().join("kakoi.sock");
    // A socket file left by a killed server: nobody listens on it.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let s = Server::start(&format!(
        "listen = \"unix:{}\"\nworkers = 1\n",
        sock.display()
    ));
    assert_eq!(s.base, format!("unix:{}", sock.display()));
    let (st, h) = unix_request(
        &sock,
        "GET /health HTTP/1.1\r\nHost: kakoi\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(st, 200);
    assert_eq!(h["ready"], true);
    let body = r#"{"code":"print('over a unix socket')"}"#;
    let (st, r) = unix_request(
        &sock,
        &format!(
            "POST /run HTTP/1.1\r\nHost: kakoi\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(result_of(st, &r).stdout, "over a unix socket\n");
    // A second server on the same live socket refuses to start.
    let mut second = kakoi()
        .args(["serve", "--listen", &format!("unix:{}", sock.display())])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = second.wait().unwrap();
    let mut err = String::new();
    second
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success());
    assert!(err.contains("another server is listening"), "{err}");
    drop(s);
    assert!(!sock.exists(), "the socket is removed on shutdown");
}

#[test]
fn logs_carry_request_ids_as_json() {
    let _g = setup!();
    let s = Server::start_with("workers = 1\n", &["--log-format", "json"], &[]);
    let rt = runtime();
    let r = rt.block_on(async {
        client()
            .post(s.url("/run"))
            .header("x-request-id", "itest-req-42")
            .json(&json!({"code": "print(1)"}))
            .send()
            .await
            .unwrap()
    });
    assert_eq!(r.headers()["x-request-id"], "itest-req-42");
    let r2 = rt.block_on(async { client().get(s.url("/health")).send().await.unwrap() });
    let generated = r2.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    std::thread::sleep(Duration::from_millis(200));
    let log = s.log();
    let line = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .find(|v| v["span"]["request_id"] == "itest-req-42" && v["message"] == "response")
        .unwrap_or_else(|| panic!("no JSON response line with the request id:\n{log}"));
    assert_eq!(line["status"], 200);
    assert_eq!(line["span"]["path"], "/run");
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

#[test]
fn metrics_counters_move() {
    let _g = setup!();
    let s = Server::start("workers = 1\nqueue = 0\n");
    let rt = runtime();
    rt.block_on(async {
        let c = client();
        let before = c.get(s.url("/metrics")).send().await.unwrap();
        assert!(
            before.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text")
        );
        let before = before.text().await.unwrap();
        post_json(&s, json!({"code": "print(1)"})).await;
        post_json(&s, json!({"code": "print(1)"})).await;
        post_json(
            &s,
            json!({"code": "import time\ntime.sleep(5)", "timeout": 0.2}),
        )
        .await;
        post_json(&s, json!({"code": "1", "timeout": 99})).await;
        let after = c
            .get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let delta = |n: &str| metric(&after, n) - metric(&before, n);
        assert_eq!(delta("kakoi_runs_total{status=\"ok\"}"), 2.0, "{after}");
        assert_eq!(
            delta("kakoi_runs_total{status=\"timeout\"}"),
            1.0,
            "{after}"
        );
        assert_eq!(
            delta("kakoi_rejected_runs_total{reason=\"bad_request\"}"),
            1.0
        );
        assert_eq!(delta("kakoi_run_duration_seconds_count"), 3.0);
        assert!(delta("kakoi_http_responses_total{code=\"200\"}") >= 4.0);
        assert_eq!(metric(&after, "kakoi_workers"), 1.0);
        assert_eq!(metric(&after, "kakoi_queue_depth"), 0.0);
    });
}

/// Check `value` against an OpenAPI schema object: types, required properties, and no
/// property the schema does not declare. `$ref`s are resolved in `doc`.
fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        return conforms(doc, &doc["components"]["schemas"][name], value, at);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(alts) = schema[key].as_array() {
            return if alts.iter().any(|s| conforms(doc, s, value, at).is_ok()) {
                Ok(())
            } else {
                Err(format!("{at}: {value} matches none of {key}"))
            };
        }
    }
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            conforms(doc, s, value, at)?;
        }
        return Ok(());
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if value.is_null() {
        return if types.is_empty() || types.contains(&"null") {
            Ok(())
        } else {
            Err(format!("{at}: null where {types:?} is required"))
        };
    }
    let ok = types.is_empty()
        || types.iter().any(|t| match *t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            _ => false,
        });
    if !ok {
        return Err(format!("{at}: {value} is not {types:?}"));
    }
    if let Some(e) = schema["enum"].as_array()
        && !e.contains(value)
    {
        return Err(format!("{at}: {value} not in {e:?}"));
    }
    if let (Some(obj), Some(props)) = (value.as_object(), schema["properties"].as_object()) {
        for req in schema["required"].as_array().into_iter().flatten() {
            let req = req.as_str().unwrap();
            if !obj.contains_key(req) {
                return Err(format!("{at}: required property {req} missing"));
            }
        }
        for (k, v) in obj {
            match props.get(k) {
                Some(s) => conforms(doc, s, v, &format!("{at}.{k}"))?,
                None => return Err(format!("{at}: property {k} is not in the schema")),
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            conforms(doc, items, v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

#[test]
fn the_served_openapi_matches_the_handlers_and_real_responses() {
    let _g = setup!();
    let s = Server::start("workers = 1\n");
    let rt = runtime();
    rt.block_on(async {
        let c = client();
        let served: Value = c
            .get(s.url("/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let generated = serde_json::to_value(kakoi::server::http::openapi()).unwrap();
        assert_eq!(served, generated);
        let schema_of = |path: &str, method: &str, code: &str| {
            served["paths"][path][method]["responses"][code]["content"]["application/json"]
                ["schema"]
                .clone()
        };
        let (st, ok) = post_json(&s, json!({"code": "print('hi')"})).await;
        assert_eq!(st, 200);
        conforms(&served, &schema_of("/run", "post", "200"), &ok, "RunResult").unwrap();
        let (st, timeout) = post_json(
            &s,
            json!({"code": "import time\ntime.sleep(9)", "timeout": 0.2}),
        )
        .await;
        assert_eq!(st, 200);
        conforms(
            &served,
            &schema_of("/run", "post", "200"),
            &timeout,
            "RunResult",
        )
        .unwrap();
        let (st, err) = post_json(&s, json!({"nope": 1})).await;
        assert_eq!(st, 400);
        conforms(
            &served,
            &schema_of("/run", "post", "400"),
            &err,
            "ErrorBody",
        )
        .unwrap();
        let h: Value = c
            .get(s.url("/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        conforms(&served, &schema_of("/health", "get", "200"), &h, "Health").unwrap();
        let envs: Value = c
            .get(s.url("/envs"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        conforms(&served, &schema_of("/envs", "get", "200"), &envs, "EnvList").unwrap();
        // A field the schema does not have is caught (the checker can fail).
        let mut extra = ok.clone();
        extra["surprise"] = json!(1);
        assert!(
            conforms(
                &served,
                &schema_of("/run", "post", "200"),
                &extra,
                "RunResult"
            )
            .is_err()
        );
    });
}

// ---------------------------------------------------------------------------------------
// ruff: format and lint in the sandbox.
// ---------------------------------------------------------------------------------------

#[test]
fn format_and_lint_run_in_the_sandbox() {
    let _g = setup_pypi!();
    // No KAKOI_RUFF, no ruff on PATH: the env toolchain's pinned ruff is used.
    let toolchain = shared_toolchain();
    let s = Server::start_with("workers = 1\n", &[], &[("PATH", "/usr/bin:/bin")]);
    let rt = runtime();
    rt.block_on(async {
        // check: report a diff, run the code as sent.
        let code = "import os\nx=[1,\n  2]\nprint(open(__file__).read(), end='')\n";
        let (st, b) = post_json(&s, json!({"code": code, "format": "check", "lint": "warn"})).await;
        let r = result_of(st, &b);
        assert_eq!(r.stdout, code, "check runs the program unchanged");
        let f = r.format.unwrap();
        assert!(f.changed);
        assert!(
            f.diff.contains("\n-x=[1,\n-  2]\n") && f.diff.contains("\n+x = [1, 2]\n"),
            "{}",
            f.diff
        );
        let lint = r.lint.unwrap();
        assert_eq!(lint.mode, "warn");
        assert_eq!(lint.diagnostics.len(), 1, "{lint:?}");
        assert_eq!(lint.diagnostics[0].code, "F401");
        assert_eq!(
            (lint.diagnostics[0].line, lint.diagnostics[0].column),
            (1, 8)
        );
        assert!(lint.diagnostics[0].fix_available);
        // apply: the formatted program is what runs.
        let (st, b) = post_json(&s, json!({"code": code, "format": "apply"})).await;
        let r = result_of(st, &b);
        assert_eq!(
            r.stdout,
            "import os\n\nx = [1, 2]\nprint(open(__file__).read(), end=\"\")\n"
        );
        assert!(r.lint.is_none());
        // error: diagnostics refuse the run, and say which.
        let (st, b) = post_json(
            &s,
            json!({"code": "print(undefined_name)\n", "lint": "error"}),
        )
        .await;
        let msg = assert_error(st, &b, 422, "lint_failed");
        assert!(msg.contains("F821"), "{msg}");
        assert_eq!(
            b["error"]["detail"]["lint"]["diagnostics"][0]["code"],
            "F821"
        );
        // A clean program passes lint=error.
        let (st, b) = post_json(&s, json!({"code": "print('clean')\n", "lint": "error"})).await;
        assert_eq!(result_of(st, &b).stdout, "clean\n");
        // Code ruff cannot parse: format says why, the program runs (and fails) as sent.
        let (st, b) = post_json(
            &s,
            json!({"code": "def (:\n", "format": "apply", "lint": "warn"}),
        )
        .await;
        let r = result_of(st, &b);
        assert_eq!(r.status, Status::RuntimeError);
        assert!(r.stderr.contains("SyntaxError"));
        assert!(r.format.unwrap().error.unwrap().contains("Failed to parse"));
        assert_eq!(r.lint.unwrap().diagnostics[0].code, "invalid-syntax");
        // Which ruff did it: the toolchain's.
        let h = health(&s).await;
        assert_eq!(h["lint"], true);
        assert_eq!(
            h["ruff"].as_str().unwrap(),
            toolchain.join("bin/ruff").to_str().unwrap(),
            "{h:#}"
        );
    });
}

#[test]
fn format_without_ruff_is_a_clear_422() {
    let _g = setup!();
    // The configured path comes first...
    let s = Server::start_with("workers = 1\nruff = \"/nonexistent/ruff\"\n", &[], &[]);
    let rt = runtime();
    let (st, b) = rt.block_on(post_json(&s, json!({"code": "print(1)", "lint": "warn"})));
    let msg = assert_error(st, &b, 422, "lint_unavailable");
    assert!(msg.contains("/nonexistent/ruff"), "{msg}");
    assert_eq!(rt.block_on(health(&s))["lint"], false);
    drop(s);
    // ...then KAKOI_RUFF, before the toolchain (which the shared data directory has).
    let s = Server::start_with(
        "workers = 1\n",
        &[],
        &[("KAKOI_RUFF", "/nonexistent/kakoi-ruff")],
    );
    let (st, b) = rt.block_on(post_json(
        &s,
        json!({"code": "print(1)", "format": "check"}),
    ));
    let msg = assert_error(st, &b, 422, "lint_unavailable");
    assert!(msg.contains("KAKOI_RUFF=/nonexistent/kakoi-ruff"), "{msg}");
}

#[test]
fn cli_run_formats_and_lints() {
    let _g = setup_pypi!();
    shared_toolchain();
    let dir = scratch();
    let main = dir.path().join("main.py");
    std::fs::write(&main, "import os\nprint( 'cli' )\n").unwrap();
    // The same lookup as the server: no KAKOI_RUFF and no ruff on PATH, so the data
    // directory's toolchain ruff is used.
    let cli = || {
        let mut cmd = kakoi();
        cmd.env_remove("KAKOI_RUFF")
            .env("PATH", "/usr/bin:/bin")
            .env("KAKOI_DATA_DIR", shared_data());
        cmd
    };
    let out = cli()
        .args(["run", "--json", "--format=check", "--lint=warn"])
        .arg(&main)
        .output()
        .unwrap();
    let r = parse_result(&out);
    assert_eq!(r.stdout, "cli\n");
    assert!(r.format.unwrap().changed);
    assert_eq!(r.lint.unwrap().diagnostics[0].code, "F401");
    let out = cli()
        .args(["run", "--lint=error"])
        .arg(&main)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("F401"), "{err}");
    assert!(out.stdout.is_empty(), "the program did not run");
}

// ---------------------------------------------------------------------------------------
// Returned files, environments, the Docker backend.
// ---------------------------------------------------------------------------------------

#[test]
fn files_written_under_out_come_back_within_the_caps() {
    let _g = setup!();
    let s = Server::start("workers = 1\n");
    let rt = runtime();
    let code = r#"
import os
# out/ exists, empty and writable, when the program starts.
print(os.path.isdir('out'), os.listdir('out'), os.access('out', os.W_OK))
open('out/result.txt', 'w').write('forty-two\n')
os.makedirs('out/sub')
open('out/sub/raw.bin', 'wb').write(bytes(range(256)))
os.symlink('/etc/passwd', 'out/link')
open('not-returned.txt', 'w').write('outside out/')
"#;
    let (st, b) = rt.block_on(post_json(&s, json!({ "code": code })));
    let r = result_of(st, &b);
    assert_eq!(r.status, Status::Ok, "{b:#}");
    assert_eq!(r.stdout, "True [] True\n");
    let by_path: std::collections::BTreeMap<&str, &kakoi::result::OutputFile> =
        r.files.iter().map(|f| (f.path.as_str(), f)).collect();
    assert_eq!(
        by_path.keys().copied().collect::<Vec<_>>(),
        ["link", "result.txt", "sub/raw.bin"],
        "{:?}",
        r.files
    );
    assert_eq!(
        base64_decode(by_path["result.txt"].base64.as_deref().unwrap()),
        b"forty-two\n"
    );
    assert_eq!(
        base64_decode(by_path["sub/raw.bin"].base64.as_deref().unwrap()),
        (0..=255u8).collect::<Vec<_>>()
    );
    assert_eq!(by_path["link"].skipped.as_deref(), Some("symlink"));
    assert!(
        by_path["link"].base64.is_none(),
        "a symlink is never followed"
    );
    drop(s);

    // The operator's caps apply.
    let s = Server::start("workers = 1\n[files]\nmax_file = \"1K\"\nmax_count = 2\n");
    let code = "for i in range(3):\n    open(f'out/f{i}.txt', 'w').write('x' * (i * 1000))\nopen('out/big.bin', 'wb').write(b'y' * 5000)\n";
    let (st, b) = rt.block_on(post_json(&s, json!({ "code": code })));
    let r = result_of(st, &b);
    assert_eq!(r.status, Status::Ok, "{b:#}");
    let returned: Vec<(&str, Option<&str>)> = r
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.skipped.as_deref()))
        .collect();
    // Sorted by name; after `max_count` entries, one `limit` entry names the first left out.
    assert_eq!(
        returned,
        [
            ("big.bin", Some("too_large")),
            ("f0.txt", None),
            ("f1.txt", Some("limit"))
        ],
        "{:?}",
        r.files
    );
    assert_eq!(r.files[0].size, 5000);
}

#[test]
fn a_matplotlib_plot_comes_back_as_a_file() {
    let _g = setup_pypi!();
    let s = Server::start("workers = 2\n[max_limits]\ntimeout = 600\nmemory = \"1G\"\n");
    let rt = runtime();
    let code = r#"
import os
os.environ['MPLCONFIGDIR'] = '/tmp/matplotlib'
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
plt.plot([1, 2, 3], [1, 4, 9])
plt.title('kakoi')
plt.savefig('out/plot.png')
open('out/points.csv', 'w').write('x,y\n1,1\n2,4\n3,9\n')
print('saved', matplotlib.__version__)
"#;
    let (st, b) = rt.block_on(async {
        let r = long_client()
            .post(s.url("/run"))
            .json(&json!({
                "code": code,
                "requirements": "matplotlib==3.9.2\n",
                "timeout": 120,
                "memory": "1G"
            }))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    });
    let r = result_of(st, &b);
    assert_eq!(r.status, Status::Ok, "{b:#}");
    assert_eq!(r.stdout, "saved 3.9.2\n");
    assert!(r.env.is_some(), "the run used the env: {b:#}");
    let plot = r
        .files
        .iter()
        .find(|f| f.path == "plot.png")
        .unwrap_or_else(|| panic!("no plot.png in files: {:?}", r.files));
    let png = base64_decode(plot.base64.as_deref().unwrap());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    assert_eq!(png.len() as u64, plot.size);
    assert!(png.len() > 1000, "a real plot, {} bytes", png.len());
    let csv = r.files.iter().find(|f| f.path == "points.csv").unwrap();
    assert_eq!(
        base64_decode(csv.base64.as_deref().unwrap()),
        b"x,y\n1,1\n2,4\n3,9\n"
    );
}

/// Small pure-Python packages pinned to different versions: (requirement, import name,
/// distribution name, version).
const PINNED: [(&str, &str, &str, &str); 20] = [
    ("six==1.16.0", "six", "six", "1.16.0"),
    ("six==1.17.0", "six", "six", "1.17.0"),
    ("attrs==23.2.0", "attr", "attrs", "23.2.0"),
    ("attrs==24.2.0", "attr", "attrs", "24.2.0"),
    ("idna==3.7", "idna", "idna", "3.7"),
    ("idna==3.10", "idna", "idna", "3.10"),
    ("packaging==23.2", "packaging", "packaging", "23.2"),
    ("packaging==24.2", "packaging", "packaging", "24.2"),
    ("iniconfig==2.0.0", "iniconfig", "iniconfig", "2.0.0"),
    ("tomli==2.0.1", "tomli", "tomli", "2.0.1"),
    ("tomli==2.2.1", "tomli", "tomli", "2.2.1"),
    (
        "typing-extensions==4.12.2",
        "typing_extensions",
        "typing-extensions",
        "4.12.2",
    ),
    ("pyparsing==3.1.4", "pyparsing", "pyparsing", "3.1.4"),
    ("pyparsing==3.2.0", "pyparsing", "pyparsing", "3.2.0"),
    ("zipp==3.20.2", "zipp", "zipp", "3.20.2"),
    (
        "more-itertools==10.5.0",
        "more_itertools",
        "more-itertools",
        "10.5.0",
    ),
    ("certifi==2024.8.30", "certifi", "certifi", "2024.8.30"),
    ("wcwidth==0.2.13", "wcwidth", "wcwidth", "0.2.13"),
    ("toolz==0.12.1", "toolz", "toolz", "0.12.1"),
    (
        "sortedcontainers==2.4.0",
        "sortedcontainers",
        "sortedcontainers",
        "2.4.0",
    ),
];

#[test]
fn twenty_concurrent_requests_with_different_requirements_each_get_their_own_env() {
    let _g = setup_pypi!();
    let s = Server::start("workers = 2\nqueue = 32\nqueue_timeout = 600\n");
    let launchers = s.launchers();
    let rt = runtime();
    let started = Instant::now();
    let results = rt.block_on(async {
        let mut tasks = Vec::new();
        for (i, (req, module, dist, _)) in PINNED.iter().enumerate() {
            let url = s.url("/run");
            let body = json!({
                "code": format!(
                    "import importlib, importlib.metadata as m\nimportlib.import_module({module:?})\nprint({dist:?}, m.version({dist:?}))"
                ),
                "requirements": format!("# request {i}\n{req}\n"),
            });
            tasks.push(tokio::spawn(async move {
                let r = long_client().post(url).json(&body).send().await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let mut digests = BTreeSet::new();
    let mut built = 0;
    for ((_, _, dist, version), (status, body)) in PINNED.iter().zip(&results) {
        let r = result_of(*status, body);
        assert_eq!(r.status, Status::Ok, "{body:#}");
        assert_eq!(r.stdout, format!("{dist} {version}\n"), "{body:#}");
        let env = r.env.expect("result.env");
        digests.insert(env.digest);
        built += usize::from(!env.cache_hit);
    }
    assert_eq!(digests.len(), 20, "twenty different environments");
    eprintln!(
        "20 requests with different requirements: {:?} ({built} environments built, the rest were in the shared store)",
        started.elapsed()
    );
    // The runs went to the two run launchers; builds to the one build launcher.
    let now = s.launchers();
    assert!(now.is_superset(&launchers), "{launchers:?} -> {now:?}");
    assert!(
        now.len() <= 3,
        "2 run launchers and at most 1 build launcher: {now:?}"
    );
    assert!(processes_of(&uids_of(&launchers)).is_empty());
    assert!(run_cgroups_of(&now).is_empty());
}

/// A fresh data directory: the first request builds, the second finds the env; concurrent
/// requests for one new env build it once; `POST /envs` pre-builds and `GET /envs` lists.
#[test]
fn environments_are_built_once_cached_and_listed() {
    let _g = setup_pypi!();
    let data = fresh_data("envs");
    let s = Server::start_with(
        "workers = 2\nqueue = 16\nqueue_timeout = 600\n",
        &[],
        &[("KAKOI_DATA_DIR", data.path().to_str().unwrap())],
    );
    let rt = runtime();
    let code = "import iniconfig, importlib.metadata as m\nprint(m.version('iniconfig'))";
    rt.block_on(async {
        // Four concurrent requests for one environment nobody built yet.
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let url = s.url("/run");
            let body = json!({"code": code, "requirements": "iniconfig==2.0.0\n"});
            tasks.push(tokio::spawn(async move {
                let r = long_client().post(url).json(&body).send().await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            }));
        }
        let mut first = Vec::new();
        for t in tasks {
            let (st, b) = t.await.unwrap();
            let r = result_of(st, &b);
            assert_eq!(r.stdout, "2.0.0\n", "{b:#}");
            first.push((r.env.unwrap(), r.timings.env_ms));
        }
        let builds: Vec<_> = first.iter().filter(|(e, _)| !e.cache_hit).collect();
        assert_eq!(builds.len(), 1, "built once: {first:?}");
        assert!(builds[0].0.build_ms > 0.0);
        let digest = first[0].0.digest.clone();
        assert!(first.iter().all(|(e, _)| e.digest == digest), "{first:?}");
        let build_env_ms = builds[0].1;

        // A later request finds it: no build, and faster than the build.
        let (st, b) = post_json(&s, json!({"code": code, "requirements": "iniconfig==2.0.0\n"})).await;
        let r = result_of(st, &b);
        let env = r.env.unwrap();
        assert!(env.cache_hit, "{b:#}");
        assert_eq!(env.build_ms, 0.0);
        assert_eq!(env.digest, digest);
        assert!(r.timings.env_ms > 0.0);
        assert!(
            r.timings.env_ms < build_env_ms,
            "a cache hit ({} ms) is faster than the build ({build_env_ms} ms)",
            r.timings.env_ms
        );
        let metrics = client().get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
        assert_eq!(metric(&metrics, "kakoi_env_resolutions_total{cache=\"miss\"}"), 1.0, "{metrics}");
        assert_eq!(metric(&metrics, "kakoi_env_resolutions_total{cache=\"hit\"}"), 4.0, "{metrics}");

        // POST /envs builds ahead of runs; the run then hits the cache.
        let r = long_client()
            .post(s.url("/envs"))
            .json(&json!({"requirements": "tomli==2.0.1\n"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let pre: Value = r.json().await.unwrap();
        assert_eq!(pre["cache_hit"], false, "{pre:#}");
        let pre_digest = pre["digest"].as_str().unwrap().to_owned();
        let (st, b) = post_json(
            &s,
            json!({"code": "import tomli\nprint(tomli.loads('a = 1'))", "requirements": "tomli==2.0.1\n"}),
        )
        .await;
        let r = result_of(st, &b);
        assert_eq!(r.stdout, "{'a': 1}\n");
        let env = r.env.unwrap();
        assert!(env.cache_hit);
        assert_eq!(env.digest, pre_digest);
        // Building an existing env again is a cache hit too.
        let r = client()
            .post(s.url("/envs"))
            .json(&json!({"requirements": "tomli==2.0.1\n"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.json::<Value>().await.unwrap()["cache_hit"], true);

        // GET /envs lists both.
        let list: Value = client().get(s.url("/envs")).send().await.unwrap().json().await.unwrap();
        let envs = list["envs"].as_array().unwrap();
        assert_eq!(envs.len(), 2, "{list:#}");
        let tomli = envs.iter().find(|e| e["digest"] == pre_digest.as_str()).unwrap();
        assert_eq!(tomli["requirements"], "tomli==2.0.1\n");
        assert_eq!(tomli["packages"], json!(["tomli==2.0.1"]));
        assert_eq!(tomli["in_use"], false);
        let iniconfig = envs.iter().find(|e| e["digest"] == digest.as_str()).unwrap();
        assert_eq!(iniconfig["packages"], json!(["iniconfig==2.0.0"]));
    });
    // One env directory per digest in the store, no staging left.
    let mut dirs: Vec<String> = std::fs::read_dir(data.path().join("envs/v1"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    dirs.sort();
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    assert_eq!(
        std::fs::read_dir(data.path().join("envs/v1/.staging"))
            .unwrap()
            .count(),
        0
    );
    // Builds ran as the build id (they wrote the shared uv cache as it).
    use std::os::unix::fs::MetadataExt as _;
    let cache = std::fs::metadata(data.path().join("uv-cache")).unwrap();
    assert_eq!(cache.uid(), kakoi::env::BUILD_HOST_ID);
    drop(s);
}

#[test]
fn a_failing_environment_build_is_422_with_uvs_message() {
    let _g = setup_pypi!();
    let s = Server::start("workers = 1\n");
    let rt = runtime();
    rt.block_on(async {
        let missing = "kakoi-test-no-such-package-3f9c1e==1.0\n";
        let (st, b) = post_json(&s, json!({"code": "print(1)", "requirements": missing})).await;
        let msg = assert_error(st, &b, 422, "env_failed");
        assert!(msg.contains("uv exited with"), "{msg}");
        let detail = &b["error"]["detail"];
        assert_eq!(detail["stage"], "env-resolve", "{b:#}");
        assert!(detail["uv_exit_code"].as_i64().unwrap() != 0);
        let uv = detail["uv"].as_str().unwrap();
        assert!(
            uv.contains("kakoi-test-no-such-package-3f9c1e") && uv.contains("not found"),
            "uv's own message: {uv}"
        );
        assert!(detail["hint"].is_string());
        // POST /envs says the same.
        let r = client()
            .post(s.url("/envs"))
            .json(&json!({ "requirements": missing }))
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        let b: Value = r.json().await.unwrap();
        assert_error(st, &b, 422, "env_failed");
        assert!(
            b["error"]["detail"]["uv"]
                .as_str()
                .unwrap()
                .contains("not found")
        );
        // Conflicting pins.
        let (st, b) = post_json(
            &s,
            json!({"code": "print(1)", "requirements": "six==1.16.0\nsix==1.17.0\n"}),
        )
        .await;
        assert_error(st, &b, 422, "env_failed");
        assert_eq!(b["error"]["detail"]["stage"], "env-resolve", "{b:#}");
    });
    assert!(run_cgroups_of(&s.launchers()).is_empty());
}

/// Whether Docker mode can run here (engine and worker image), or why not.
fn docker_missing() -> Option<String> {
    use kakoi::backend::docker::{DockerBackend, DockerConfig};
    match DockerBackend::new(DockerConfig::default()) {
        Ok(_) => None,
        Err(e) => Some(match e.hint() {
            Some(hint) => format!("{e} ({hint})"),
            None => e.to_string(),
        }),
    }
}

#[test]
fn docker_requests_run_in_a_container_when_the_operator_enables_it() {
    let _g = setup_pypi!();
    let missing = docker_missing();
    if !require(
        "docker",
        missing.is_none(),
        missing.as_deref().unwrap_or_default(),
    ) {
        return;
    }
    let s = Server::start("workers = 1\n[docker]\nenabled = true\n");
    let rt = runtime();
    rt.block_on(async {
        let h = health(&s).await;
        assert_eq!(
            h["backends"],
            json!([
                {"name": "native", "default": true, "files": true},
                {"name": "docker", "default": false, "files": false}
            ])
        );
        // JSON, with an environment (built natively, bound read-only into the container).
        let r = client()
            .post(s.url("/run"))
            .json(&json!({
                "code": "import os, sys, six\nprint(six.__version__, os.path.exists('/.dockerenv'), sys.stdin.read())",
                "requirements": "six==1.16.0\n",
                "stdin": "in",
                "backend": "docker"
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-kakoi-files"], "not-collected");
        let st = r.status().as_u16();
        let b: Value = r.json().await.unwrap();
        let r = result_of(st, &b);
        assert_eq!(r.status, Status::Ok, "{b:#}");
        assert_eq!(r.backend, "docker");
        assert_eq!(r.stdout, "1.16.0 True in\n");
        assert!(r.env.is_some());
        assert!(r.files.is_empty());
        // Multipart; a program that fails is a 200 with its status there too.
        let form = reqwest::multipart::Form::new()
            .part(
                "main.py",
                reqwest::multipart::Part::bytes(b"import sys\nprint('from a form')\nsys.exit(3)\n".to_vec())
                    .file_name("main.py"),
            )
            .text("backend", "docker");
        let r = client().post(s.url("/run")).multipart(form).send().await.unwrap();
        let st = r.status().as_u16();
        let b: Value = r.json().await.unwrap();
        let r = result_of(st, &b);
        assert_eq!((r.status, r.exit_code), (Status::RuntimeError, Some(3)), "{b:#}");
        assert_eq!(r.backend, "docker");
        assert_eq!(r.stdout, "from a form\n");
        // The default stays native, with files.
        let r = client()
            .post(s.url("/run"))
            .json(&json!({"code": "open('out/x', 'w').write('x')"}))
            .send()
            .await
            .unwrap();
        assert!(r.headers().get("x-kakoi-files").is_none());
        let st = r.status().as_u16();
        let r = result_of(st, &r.json().await.unwrap());
        assert_eq!(r.backend, "native");
        assert_eq!(r.files.len(), 1);
    });
    drop(s);
    // The operator may make docker the default; a client may still ask for native.
    let s = Server::start("workers = 1\nbackend = \"docker\"\n[docker]\nenabled = true\n");
    rt.block_on(async {
        let (st, b) = post_json(&s, json!({"code": "print('default')"})).await;
        assert_eq!(result_of(st, &b).backend, "docker");
        let (st, b) = post_json(&s, json!({"code": "print('n')", "backend": "native"})).await;
        assert_eq!(result_of(st, &b).backend, "native");
    });
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

// ---------------------------------------------------------------------------------------
// The job manager as a library (what the MCP server and the environment builder use).
// ---------------------------------------------------------------------------------------

/// A pool of this build's `kakoi __launch` workers with default settings.
fn pool_config() -> kakoi::server::pool::PoolConfig {
    let settings = kakoi::server::worker::WorkerSettings {
        cgroups: Default::default(),
        seccomp: Default::default(),
        landlock: Default::default(),
        runtime_dir: None,
        host_id: None,
        manager_pid: 0,
    };
    let mut config = kakoi::server::pool::PoolConfig::new(settings).unwrap();
    config.program = env!("CARGO_BIN_EXE_kakoi").into();
    config
}

#[test]
fn the_pool_runs_async_jobs_and_blocking_backend_calls() {
    use kakoi::Backend as _;
    use kakoi::server::pool::WorkerPool;
    let _g = setup!();
    let rt = runtime();
    rt.block_on(async {
        let mut config = pool_config();
        config.workers = 2;
        let pool = WorkerPool::start(config).await.unwrap();
        let launchers: BTreeSet<u32> = pool.worker_pids().into_iter().collect();
        assert_eq!(launchers.len(), 2);

        let r = pool
            .run(kakoi::RunSpec::command(["python3", "-c", "print('async')"]))
            .await
            .unwrap();
        assert_eq!(r.stdout, "async\n");

        // Blocking library code (e.g. the environment builder) from a blocking thread.
        let backend = pool.blocking_backend();
        let r = tokio::task::spawn_blocking(move || {
            backend.run_with(
                &kakoi::RunSpec::command(["python3", "-c", "print('blocking')"]),
                &Default::default(),
            )
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(r.stdout, "blocking\n");
        assert_eq!(r.backend, "native");

        // An invalid request is refused by the launcher without killing it.
        let e = pool
            .run(kakoi::RunSpec::command(Vec::<String>::new()))
            .await
            .unwrap_err();
        assert!(
            matches!(e, kakoi::server::JobError::InvalidRequest { .. }),
            "{e:?}"
        );
        assert_eq!(pool.stats().workers, 2);

        // Dropping a job's future cancels it and kills its sandbox; the worker ends the run
        // on a `cancel` frame and comes back to the pool (no launcher is replaced).
        let slow = pool.run(kakoi::RunSpec::command(["sleep", "30"]));
        let _ = tokio::time::timeout(Duration::from_millis(500), slow).await;
        assert_eq!(pool.stats().cancelled, 1);
        // The run counts as running until its worker has removed the sandbox.
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.stats().idle < 2 || pool.stats().running > 0 {
            assert!(Instant::now() < deadline, "{:?}", pool.stats());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let after: BTreeSet<u32> = pool.worker_pids().into_iter().collect();
        assert_eq!(
            after, launchers,
            "the cancelled run's launcher is back in the pool"
        );
        assert_eq!(pool.stats().spawned, 2);
        assert!(processes_of(&uids_of(&launchers)).is_empty());
        assert!(run_cgroups_of(&launchers).is_empty());

        // Work without a launcher (a container) takes a permit of the same pool.
        let answer = pool.run_external(|_killed| async { 42 }).await.unwrap();
        assert_eq!(answer, 42);
        let held = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run_external(|killed| async move {
                    killed.await;
                    "told to end"
                })
                .await
            })
        };
        while pool.stats().running < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(pool.stats().running, 1, "external runs count as running");

        // The environment build pool: started on first use, its launcher maps the sandbox
        // user to the build id (what `EnvStore::ensure` checks through `host_ids`).
        let build = kakoi::server::LazyPool::new(kakoi::server::service::build_pool_config(
            pool.config(),
            1,
            Duration::from_secs(60),
        ));
        assert!(build.started().is_none());
        let backend = build.blocking_backend();
        let ids = tokio::task::spawn_blocking(move || backend.host_ids())
            .await
            .unwrap();
        assert_eq!(
            ids,
            Some((kakoi::env::BUILD_HOST_ID, kakoi::env::BUILD_HOST_ID))
        );
        let build_launchers: BTreeSet<u32> =
            build.started().unwrap().worker_pids().into_iter().collect();
        assert_eq!(build_launchers.len(), 1);
        // The run pool's launchers each have their own ids.
        let run_ids = pool.blocking_backend();
        let run_ids = tokio::task::spawn_blocking(move || run_ids.host_ids())
            .await
            .unwrap()
            .unwrap();
        assert_ne!(run_ids.0, kakoi::env::BUILD_HOST_ID);
        build.shutdown(Duration::from_secs(1)).await;
        assert!(matches!(
            build.get().await,
            Err(kakoi::server::JobError::ShuttingDown)
        ));
        assert_all_gone(
            &build_launchers,
            Duration::from_secs(10),
            "after build pool shutdown",
        );

        // Shutdown tells external runs to end once the grace period is over.
        let t = Instant::now();
        pool.shutdown(Duration::from_millis(300)).await;
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(held.await.unwrap(), Ok("told to end"));
        let e = pool
            .run(kakoi::RunSpec::command(["true"]))
            .await
            .unwrap_err();
        assert_eq!(e, kakoi::server::JobError::ShuttingDown);
        let e = pool.run_external(|_| async {}).await.unwrap_err();
        assert_eq!(e, kakoi::server::JobError::ShuttingDown);
        assert_all_gone(&launchers, Duration::from_secs(10), "after pool shutdown");
    });
}

/// A shutdown right after a cancellation waits for the cancelled run's cleanup: the manager
/// exits when `shutdown` returns, and a worker still removing its sandbox would be killed by
/// PDEATHSIG with the run's cgroup left behind (what `kakoi mcp` did when the client closed
/// stdin during a call).
#[test]
fn a_shutdown_right_after_a_cancellation_waits_for_the_cleanup() {
    use kakoi::server::pool::WorkerPool;
    let _g = setup!();
    let rt = runtime();
    rt.block_on(async {
        let mut config = pool_config();
        config.workers = 1;
        config.prestart = true;
        let pool = WorkerPool::start(config).await.unwrap();
        let launchers: BTreeSet<u32> = pool.worker_pids().into_iter().collect();
        assert_eq!(launchers.len(), 1);
        let uids = uids_of(&launchers);
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let slow = pool.run(kakoi::RunSpec::command([
            "sh".to_owned(),
            "-c".to_owned(),
            format!("sleep 3600.{nonce}; : {nonce}"),
        ]));
        // Long enough for the sandbox to start (its processes and cgroup exist).
        let _ = tokio::time::timeout(Duration::from_millis(700), slow).await;
        assert_eq!(pool.stats().cancelled, 1);
        pool.shutdown(Duration::from_secs(5)).await;
        // No polling: all of it must be gone when `shutdown` returns.
        let cgroups = run_cgroups_of(&launchers);
        assert!(cgroups.is_empty(), "cgroups left at shutdown: {cgroups:?}");
        let procs = processes_of(&uids);
        assert!(procs.is_empty(), "processes left at shutdown: {procs:?}");
        let live: Vec<u32> = launchers.iter().copied().filter(|p| alive(*p)).collect();
        assert!(live.is_empty(), "launchers left at shutdown: {live:?}");
    });
}
