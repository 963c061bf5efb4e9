//! End-to-end tests of `kakoi serve` over loopback with a real HTTP client (reqwest), and over a
//! unix socket. Each test starts its own server process (`kakoi serve --config <tmp>`), talks
//! to it, and checks on the host what it left: launchers, sandbox processes (by the host uid a
//! launcher maps its sandbox to) and run cgroups (by launcher pid).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
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

        let (st, b) = post_json(
            &s,
            json!({"code": "print(1)", "requirements": "rich==13.9.4\n"}),
        )
        .await;
        assert!(assert_error(st, &b, 422, "env_failed").contains("requirements"));

        let r = c
            .post(s.url("/envs"))
            .json(&json!({"requirements": "rich==13.9.4\n"}))
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        assert_error(st, &r.json().await.unwrap(), 422, "env_failed");
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
fn a_client_that_disconnects_gets_its_sandbox_killed() {
    let _g = setup!();
    let s = Server::start("workers = 1\n");
    let rt = runtime();
    let launchers = s.launchers();
    assert_eq!(launchers.len(), 1, "{launchers:?}");
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
    // The sandbox's processes and cgroup are gone. (The launcher is killed with them, or,
    // when launchers take `cancel` frames, ends the run itself and stays in service.)
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
    assert!(s.log().contains("run cancelled"), "{}", s.log());
    // The server goes on with a new launcher.
    let (status, body) = rt.block_on(post_json(&s, json!({"code": "print('still here')"})));
    assert_eq!(result_of(status, &body).stdout, "still here\n");
    let h = rt.block_on(health(&s));
    assert_eq!(h["pool"]["running"], 0);
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

/// The pinned ruff used by the tests, installed from PyPI into target/ once.
pub const RUFF_VERSION: &str = "0.17.6";

fn pinned_ruff() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-tools")
        .join(format!("ruff-{RUFF_VERSION}"));
    let bin = dir.join("bin/ruff");
    if bin.is_file() {
        return bin;
    }
    let pip = |extra: &[&str]| {
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(extra)
            .arg("--target")
            .arg(&dir)
            .arg(format!("ruff=={RUFF_VERSION}"))
            .output()
            .expect("run python3 -m pip (apt-get install python3-pip)")
    };
    let mut out = pip(&[]);
    if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("externally-managed")
    {
        // Debian's python marks itself externally managed; a --target directory of our own
        // does not touch the system's packages.
        out = pip(&["--break-system-packages"]);
    }
    assert!(
        out.status.success() && bin.is_file(),
        "cannot install ruff=={RUFF_VERSION} from PyPI into {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

#[test]
fn format_and_lint_run_in_the_sandbox() {
    let _g = setup!();
    let ruff = pinned_ruff();
    let s = Server::start_with(
        "workers = 1\n",
        &[],
        &[("KAKOI_RUFF", ruff.to_str().unwrap())],
    );
    let rt = runtime();
    rt.block_on(async {
        let h = health(&s).await;
        assert_eq!(h["lint"], true);
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
    });
}

#[test]
fn format_without_ruff_is_a_clear_422() {
    let _g = setup!();
    let s = Server::start_with("workers = 1\nruff = \"/nonexistent/ruff\"\n", &[], &[]);
    let rt = runtime();
    let (st, b) = rt.block_on(post_json(&s, json!({"code": "print(1)", "lint": "warn"})));
    let msg = assert_error(st, &b, 422, "lint_unavailable");
    assert!(msg.contains("/nonexistent/ruff"), "{msg}");
}

#[test]
fn cli_run_formats_and_lints() {
    let _g = setup!();
    let ruff = pinned_ruff();
    let dir = scratch();
    let main = dir.path().join("main.py");
    std::fs::write(&main, "import os\nprint( 'cli' )\n").unwrap();
    let out = kakoi()
        .env("KAKOI_RUFF", &ruff)
        .args(["run", "--json", "--format=check", "--lint=warn"])
        .arg(&main)
        .output()
        .unwrap();
    let r = parse_result(&out);
    assert_eq!(r.stdout, "cli\n");
    assert!(r.format.unwrap().changed);
    assert_eq!(r.lint.unwrap().diagnostics[0].code, "F401");
    let out = kakoi()
        .env("KAKOI_RUFF", &ruff)
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
// Environments and returned files (need the environment store and RunSpec.collect).
// ---------------------------------------------------------------------------------------

#[test]
fn a_matplotlib_plot_comes_back_as_a_file() {
    let _g = setup!();
    let s = Server::start("workers = 2\n[max_limits]\ntimeout = 600\nmemory = \"1G\"\n");
    let rt = runtime();
    let (st, b) = rt.block_on(post_json(
        &s,
        json!({
            "code": "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.savefig('out/plot.png')\nprint('saved')\n",
            "requirements": "matplotlib==3.9.2\n",
            "timeout": 120,
            "memory": "1G"
        }),
    ));
    if st == 422 && b["error"]["message"] == kakoi::server::env::NO_ENVIRONMENTS {
        require(
            "envs",
            false,
            "this build has no environment store yet (src/env); the plot needs matplotlib",
        );
        return;
    }
    let r = result_of(st, &b);
    assert_eq!(r.status, Status::Ok, "{b:#}");
    let plot = r
        .files
        .iter()
        .find(|f| f.path == "plot.png")
        .unwrap_or_else(|| panic!("no plot.png in files: {:?}", r.files));
    let png = base64_decode(plot.base64.as_deref().unwrap());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(png.len() as u64, plot.size);
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

// ---------------------------------------------------------------------------------------
// The job manager as a library (what the MCP server and the environment builder use).
// ---------------------------------------------------------------------------------------

#[test]
fn the_pool_runs_async_jobs_and_blocking_backend_calls() {
    use kakoi::Backend as _;
    use kakoi::server::pool::{PoolConfig, WorkerPool};
    use kakoi::server::worker::WorkerSettings;
    let _g = setup!();
    let rt = runtime();
    rt.block_on(async {
        let settings = WorkerSettings {
            cgroups: Default::default(),
            seccomp: Default::default(),
            landlock: Default::default(),
            runtime_dir: None,
            host_id: None,
            manager_pid: 0,
        };
        let mut config = PoolConfig::new(settings).unwrap();
        config.program = env!("CARGO_BIN_EXE_kakoi").into();
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

        // Dropping a job's future cancels it and kills its sandbox.
        let slow = pool.run(kakoi::RunSpec::command(["sleep", "30"]));
        let _ = tokio::time::timeout(Duration::from_millis(500), slow).await;
        assert_eq!(pool.stats().cancelled, 1);
        assert_eq!(pool.stats().running, 0);

        pool.shutdown(Duration::from_secs(1)).await;
        let e = pool
            .run(kakoi::RunSpec::command(["true"]))
            .await
            .unwrap_err();
        assert_eq!(e, kakoi::server::JobError::ShuttingDown);
        assert_all_gone(&launchers, Duration::from_secs(10), "after pool shutdown");
    });
}
