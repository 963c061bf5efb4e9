//! The MCP server end to end with rmcp's own client: `kakoi mcp` spawned as a child process
//! (stdio), and `kakoi serve`'s `/mcp` over loopback (streamable HTTP). Each test checks on
//! the host what the server left: launchers, sandbox processes and run cgroups.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use rmcp::ServiceExt as _;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResult, ClientRequest, JsonObject,
    ProgressNotificationParam,
};
use rmcp::service::{PeerRequestOptions, RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::TokioChildProcess;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
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

type McpClient = RunningService<RoleClient, Progress>;

/// The test client's handler: records the progress notifications it gets.
#[derive(Debug, Clone, Default)]
struct Progress(Arc<Mutex<Vec<ProgressEvent>>>);

/// One progress notification: its progress value and message.
type ProgressEvent = (f64, Option<String>);

impl rmcp::ClientHandler for Progress {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: rmcp::service::NotificationContext<RoleClient>,
    ) {
        self.0
            .lock()
            .unwrap()
            .push((params.progress, params.message));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A configuration file in a temp dir.
fn config(toml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("itest-mcp-")
        .tempdir()
        .unwrap();
    let path = dir.path().join("kakoi.toml");
    std::fs::write(&path, toml).unwrap();
    (dir, path)
}

/// `kakoi mcp` as a child process, with rmcp's client on its stdio.
struct StdioServer {
    client: Option<McpClient>,
    pid: u32,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

async fn stdio(toml: &str, args: &[&str]) -> StdioServer {
    let (dir, path) = config(toml);
    let log = dir.path().join("stderr.log");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kakoi"));
    cmd.arg("mcp")
        .arg("--config")
        .arg(&path)
        .args(args)
        .current_dir("/")
        .env("RUST_LOG", "info")
        .env_remove("KAKOI_CONFIG");
    let (transport, _) = TokioChildProcess::builder(cmd)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn kakoi mcp");
    let pid = transport.id().expect("a pid");
    let client = Progress::default()
        .serve(transport)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "initialize failed: {e}\nlog:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    StdioServer {
        client: Some(client),
        pid,
        log,
        _dir: dir,
    }
}

impl StdioServer {
    fn client(&self) -> &McpClient {
        self.client.as_ref().unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Close stdin the way MCP clients do and wait for the server to exit on its own.
    async fn close(&mut self) {
        let client = self.client.take().unwrap();
        let _ = client.cancel().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while alive(self.pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            !alive(self.pid),
            "kakoi mcp still runs 20 s after its stdin closed"
        );
    }
}

fn args(v: Value) -> JsonObject {
    match v {
        Value::Object(o) => o,
        other => panic!("arguments must be an object: {other}"),
    }
}

async fn call(
    client: &rmcp::Peer<RoleClient>,
    tool: &'static str,
    arguments: Value,
) -> CallToolResult {
    client
        .call_tool(CallToolRequestParams::new(tool).with_arguments(args(arguments)))
        .await
        .unwrap_or_else(|e| panic!("{tool}: protocol error {e}"))
}

fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn structured(r: &CallToolResult) -> &Value {
    r.structured_content
        .as_ref()
        .unwrap_or_else(|| panic!("no structured content: {}", text(r)))
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

/// Wait until none of `launchers`, their sandbox processes or their run cgroups is left.
fn assert_all_gone(launchers: &BTreeSet<u32>, within: Duration, what: &str) {
    let uids: BTreeSet<u32> = launchers.iter().map(|p| host_uid_of_launcher(*p)).collect();
    let deadline = Instant::now() + within;
    loop {
        let live: Vec<u32> = launchers.iter().copied().filter(|p| alive(*p)).collect();
        let procs = processes_of(&uids);
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

/// Host pids of `sleep 3600.<nonce>` (sandboxes are in pid namespaces the host sees into).
fn sleepers(nonce: &str) -> Vec<u32> {
    let needle = format!("sleep\x003600.{nonce}");
    host_processes()
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{}/cmdline", p.pid))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .map(|p| p.pid)
        .collect()
}

fn nonce() -> String {
    format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000_000
    )
}

async fn wait_until(within: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while started.elapsed() < within {
        if ok() {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within {within:?}");
}

/// A PNG made with the standard library only (no environment needed).
const PNG_PROGRAM: &str = r#"
import os, struct, zlib
def chunk(kind, data):
    body = kind + data
    return struct.pack('>I', len(data)) + body + struct.pack('>I', zlib.crc32(body) & 0xffffffff)
w, h = 7, 5
rows = b''.join(b'\x00' + bytes([200, 40, 40]) * w for _ in range(h))
png = (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0))
       + chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b''))
os.makedirs('out', exist_ok=True)
open('out/dot.png', 'wb').write(png)
open('out/table.csv', 'w').write('a,b\n1,2\n')
open('out/raw.bin', 'wb').write(bytes(range(256)))
"#;

const CONFIG: &str = "workers = 2\n[max_limits]\ntimeout = 60\nmemory = \"512M\"\n";

/// Everything a client does over stdio, in one session: list, run, fail, time out, get files
/// back, make mistakes the model can fix.
#[test]
fn stdio_lists_the_tools_and_runs_programs() {
    let _g = setup!();
    let rt = runtime();
    rt.block_on(async {
        let mut s = stdio(CONFIG, &[]).await;
        let c = s.client();
        let info = c.peer_info().expect("the server answered initialize");
        assert_eq!(info.server_info.as_ref().unwrap().name, "kakoi");
        assert!(info.capabilities.tools.is_some());
        assert!(info.instructions.as_deref().unwrap_or("").contains("run_python"));

        let tools = c.list_all_tools().await.unwrap();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(names, ["run_python", "build_env", "list_envs"], "run_command is off by default");
        let run = &tools[0];
        assert_eq!(run.input_schema["type"], "object");
        assert_eq!(run.input_schema["required"], json!(["code"]));
        assert_eq!(run.output_schema.as_ref().unwrap()["type"], "object");
        let timeout_doc = run.input_schema["properties"]["timeout"]["description"]
            .as_str()
            .unwrap();
        assert!(timeout_doc.contains("at most 60 s"), "{timeout_doc}");
        assert!(run.input_schema["properties"].get("network").is_none());

        let launchers = children_of(s.pid);
        assert_eq!(launchers.len(), 2, "two launchers for workers = 2");

        // Success.
        let r = call(
            c,
            "run_python",
            json!({"code": "import sys\nprint('hi', sys.stdin.read(), open('in.txt').read())", "stdin": "there", "files": {"in.txt": "file"}}),
        )
        .await;
        assert_eq!(r.is_error, Some(false), "{}", text(&r));
        assert_eq!(structured(&r)["status"], "ok");
        assert_eq!(structured(&r)["stdout"], "hi there file\n");
        assert!(text(&r).starts_with("status: ok"), "{}", text(&r));

        // A failing program is a result, not a tool error.
        let r = call(c, "run_python", json!({"code": "1/0"})).await;
        assert_eq!(r.is_error, Some(false));
        assert_eq!(structured(&r)["status"], "runtime_error");
        assert_eq!(structured(&r)["exit_code"], 1);
        assert!(text(&r).contains("ZeroDivisionError"), "{}", text(&r));

        // A timeout too.
        let started = Instant::now();
        let r = call(c, "run_python", json!({"code": "import time; time.sleep(30)", "timeout": 1})).await;
        assert_eq!(r.is_error, Some(false));
        assert_eq!(structured(&r)["status"], "timeout");
        assert!(started.elapsed() < Duration::from_secs(15));

        // A call that runs for a while reports progress (every 3 s).
        let r = call(c, "run_python", json!({"code": "import time; time.sleep(3.5); print('slept')"})).await;
        assert_eq!(structured(&r)["stdout"], "slept\n");
        let progress = c.service().0.lock().unwrap().clone();
        assert!(
            progress.iter().any(|(p, m)| *p >= 3.0 && m.as_deref().is_some_and(|m| m.starts_with("run_python: running for"))),
            "{progress:?}"
        );

        // So is running out of memory.
        let r = call(
            c,
            "run_python",
            json!({"code": "x = bytearray(200 << 20)\nprint(len(x))", "memory": "64M"}),
        )
        .await;
        assert_eq!(structured(&r)["status"], "oom", "{}", text(&r));

        // Returned files: a PNG as an image, text as a text resource, bytes as a blob.
        let r = call(c, "run_python", json!({"code": PNG_PROGRAM})).await;
        assert_eq!(structured(&r)["status"], "ok", "{}", text(&r));
        let image = r
            .content
            .iter()
            .find_map(|c| c.as_image())
            .unwrap_or_else(|| panic!("no image content: {}", text(&r)));
        assert_eq!(image.mime_type, "image/png");
        let png = base64::engine::general_purpose::STANDARD
            .decode(&image.data)
            .unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[16..24], &[0, 0, 0, 7, 0, 0, 0, 5], "7x5 pixels");
        let resources: Vec<Value> = r
            .content
            .iter()
            .filter_map(|c| c.as_resource())
            .map(|r| serde_json::to_value(&r.resource).unwrap())
            .collect();
        assert_eq!(resources.len(), 2, "{resources:?}");
        let csv = resources.iter().find(|r| r["uri"] == "sandbox:/work/out/table.csv").unwrap();
        assert_eq!(csv["text"], "a,b\n1,2\n");
        assert_eq!(csv["mimeType"], "text/csv");
        let raw = resources.iter().find(|r| r["uri"] == "sandbox:/work/out/raw.bin").unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(raw["blob"].as_str().unwrap())
            .unwrap();
        assert_eq!(bytes, (0..=255).collect::<Vec<u8>>());
        assert!(text(&r).contains("out/dot.png (") && text(&r).contains("attached as an image"));

        // Mistakes the model can fix: tool errors with a message.
        for (arguments, needle) in [
            (json!({"code": "print(1)", "timeout": 61}), "over this server's maximum of 60 s"),
            (json!({"code": "print(1)", "memory": "2G"}), "memory"),
            (json!({"code": "print(1)", "timout": 5}), "unknown field `timout`"),
            (json!({"cod": "print(1)"}), "unknown field `cod`"),
            (json!({"code": "print(1)", "network": true}), "network access is not allowed"),
            (json!({"code": "print(1)", "files": {"../x": "y"}}), "../x"),
        ] {
            let r = call(c, "run_python", arguments.clone()).await;
            assert_eq!(r.is_error, Some(true), "{arguments}: {}", text(&r));
            assert!(text(&r).contains(needle), "{arguments}: {}", text(&r));
            assert!(r.structured_content.is_none());
        }
        let r = call(c, "run_command", json!({"argv": ["true"]})).await;
        assert_eq!(r.is_error, Some(true));
        assert!(text(&r).contains("not enabled"), "{}", text(&r));
        // An unknown tool is a protocol error.
        let e = c
            .call_tool(CallToolRequestParams::new("rm_rf").with_arguments(JsonObject::new()))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("unknown tool"), "{e}");

        let log = s.log();
        s.close().await;
        assert_all_gone(&launchers, Duration::from_secs(10), "after the client closed stdin");
        assert!(log.contains("MCP session started on stdio"), "{log}");
    });
}

/// `notifications/cancelled` for a running call kills its sandbox; the session goes on.
#[test]
fn stdio_cancellation_kills_the_sandbox() {
    let _g = setup!();
    let rt = runtime();
    rt.block_on(async {
        let mut s = stdio(CONFIG, &[]).await;
        let c = s.client();
        let mut launchers = children_of(s.pid);
        let nonce = nonce();
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(
            CallToolRequestParams::new("run_python").with_arguments(args(json!({
                "code": format!("import subprocess\nsubprocess.run(['sleep', '3600.{nonce}'])\nprint('finished')"),
                "timeout": 60
            }))),
        ));
        let handle = c
            .send_cancellable_request(request, PeerRequestOptions::no_options())
            .await
            .unwrap();
        wait_until(Duration::from_secs(30), "the sandboxed sleep to start", || {
            !sleepers(&nonce).is_empty()
        })
        .await;
        launchers.extend(children_of(s.pid));
        handle.cancel(Some("test cancels".into())).await.unwrap();
        let took = wait_until(Duration::from_secs(10), "the cancelled sandbox to die", || {
            sleepers(&nonce).is_empty()
        })
        .await;
        eprintln!("cancel to sandbox gone: {took:?}");
        let log = s.log();
        assert!(log.contains("tool call cancelled by the client"), "{log}");
        // The session goes on, and the killed launcher's sandbox left nothing.
        let r = call(c, "run_python", json!({"code": "print('still here')"})).await;
        assert_eq!(structured(&r)["stdout"], "still here\n");
        // A client that goes away (closes stdin) mid-call takes its runs down too (after
        // rmcp's 5 s drain for answers already on their way).
        let nonce = self::nonce();
        let peer = c.peer().clone();
        let code = format!("import subprocess\nsubprocess.run(['sleep', '3600.{nonce}'])");
        let orphan = tokio::spawn(async move {
            let _ = peer
                .call_tool(CallToolRequestParams::new("run_python").with_arguments(args(json!({
                    "code": code,
                    "timeout": 60
                }))))
                .await;
        });
        wait_until(Duration::from_secs(30), "the second sleep to start", || {
            !sleepers(&nonce).is_empty()
        })
        .await;
        launchers.extend(children_of(s.pid));
        s.close().await;
        wait_until(Duration::from_secs(10), "the orphaned run to die", || {
            sleepers(&nonce).is_empty()
        })
        .await;
        orphan.abort();
        assert_all_gone(&launchers, Duration::from_secs(10), "after cancellation");
    });
}

/// Every line on stdout is a JSON-RPC message, whatever is logged and whatever programs
/// print; closing stdin ends the server.
#[test]
fn stdio_stdout_carries_only_protocol_messages() {
    let _g = setup!();
    let (_dir, path) = config(CONFIG);
    let mut child: Child = kakoi()
        .arg("mcp")
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            lines.push(line);
        }
        lines
    });
    let mut stdin = child.stdin.take().unwrap();
    let mut send = |v: Value| {
        writeln!(stdin, "{v}").unwrap();
        stdin.flush().unwrap();
    };
    let recv = |id: u64| loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a reply within 60 s");
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["id"] == id {
            return v;
        }
    };
    send(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}),
    );
    assert_eq!(recv(1)["result"]["serverInfo"]["name"], "kakoi");
    send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}));
    assert_eq!(recv(2)["result"]["tools"][0]["name"], "run_python");
    // The program floods its stdout and stderr; none of it may reach ours.
    send(
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
        "name": "run_python",
        "arguments": {"code": "import sys\nfor i in range(2000):\n    print('noise', i)\n    print('err', i, file=sys.stderr)\n"}}}),
    );
    let r = recv(3);
    assert_eq!(r["result"]["structuredContent"]["status"], "ok", "{r}");
    let launchers = children_of(pid);
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "kakoi mcp did not exit after stdin closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}\n{}", log.lock().unwrap());
    let lines = reader.join().unwrap();
    assert!(lines.len() >= 3);
    for line in &lines {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line:?}"));
        assert_eq!(v["jsonrpc"], "2.0", "{line}");
    }
    let log = log.lock().unwrap().clone();
    assert!(log.contains("DEBUG"), "logs go to stderr: {log}");
    assert_all_gone(&launchers, Duration::from_secs(10), "after stdin closed");
}

/// SIGTERM lets a running call finish and answer, then the server exits.
#[test]
fn stdio_sigterm_lets_running_calls_finish() {
    let _g = setup!();
    let rt = runtime();
    rt.block_on(async {
        let mut s = stdio(CONFIG, &[]).await;
        let launchers = children_of(s.pid);
        let c = s.client().peer().clone();
        let running = tokio::spawn(async move {
            call(
                &c,
                "run_python",
                json!({"code": "import time\ntime.sleep(1.5)\nprint('done')"}),
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(s.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let r = running.await.unwrap();
        assert_eq!(structured(&r)["stdout"], "done\n", "{}", text(&r));
        wait_until(
            Duration::from_secs(20),
            "kakoi mcp to exit after SIGTERM",
            || !alive(s.pid),
        )
        .await;
        assert!(s.log().contains("shutting down"), "{}", s.log());
        let _ = s.client.take();
        assert_all_gone(&launchers, Duration::from_secs(10), "after SIGTERM");
    });
}

/// `allow_commands` lists `run_command`; `allow_network` adds the `network` argument.
#[test]
fn run_command_is_listed_and_runs_when_the_operator_enables_it() {
    let _g = setup!();
    let rt = runtime();
    rt.block_on(async {
        let mut s = stdio("workers = 1\nallow_network = true\n", &["--allow-commands"]).await;
        let c = s.client();
        let tools = c.list_all_tools().await.unwrap();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(
            names,
            ["run_python", "run_command", "build_env", "list_envs"]
        );
        assert!(tools[1].input_schema["properties"]["network"].is_object());
        let r = call(
            c,
            "run_command",
            json!({"argv": ["sh", "-c", "cat; echo from sh; id -u; exit 3"], "stdin": "piped\n"}),
        )
        .await;
        let v = structured(&r);
        assert_eq!(v["status"], "runtime_error", "{}", text(&r));
        assert_eq!(v["exit_code"], 3);
        assert_eq!(v["stdout"], "piped\nfrom sh\n1000\n");
        let r = call(c, "run_command", json!({"argv": []})).await;
        assert_eq!(r.is_error, Some(true));
        assert!(text(&r).contains("argv is empty"));
        let r = call(c, "run_command", json!({"argv": ["/no/such/program"]})).await;
        assert!(
            r.is_error == Some(true) || structured(&r)["status"] != "ok",
            "{}",
            text(&r)
        );
        s.close().await;
    });
}

// ---------------------------------------------------------------------------------------
// Streamable HTTP on `kakoi serve`.
// ---------------------------------------------------------------------------------------

/// A `kakoi serve` process.
struct Serve {
    child: Child,
    base: String,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Serve {
    fn start(toml: &str) -> Serve {
        let (dir, path) = config(&format!("listen = \"127.0.0.1:0\"\n{toml}"));
        let mut child = kakoi()
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env_remove("KAKOI_TOKEN")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kakoi serve");
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
        let Ok(base) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let status = child.wait();
            panic!(
                "kakoi serve did not start ({status:?}); log:\n{}",
                log.lock().unwrap()
            );
        };
        Serve {
            child,
            base,
            log,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("{}/mcp", self.base)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM and wait for a clean exit.
    fn stop(&mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{status:?}\n{}", self.log());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kakoi serve did not stop\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

const TOKEN: &str = "mcp-test-token-0123456789";

async fn http_client(url: &str, token: &str) -> McpClient {
    let transport = StreamableHttpClientTransport::with_client(
        reqwest::Client::new(),
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(token.to_owned()),
    );
    Progress::default()
        .serve(transport)
        .await
        .expect("initialize over HTTP")
}

/// A raw initialize POST with extra headers; returns the status.
async fn raw_post(url: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap().status().as_u16()
}

/// `/mcp` on `kakoi serve`: the same tools behind the server's bearer token, with the Host
/// and Origin checks the transport needs against DNS rebinding; cancellation kills the run.
#[test]
fn http_mcp_runs_programs_behind_auth_and_host_checks() {
    let _g = setup!();
    let rt = runtime();
    let mut s = Serve::start(&format!("token = \"{TOKEN}\"\n{CONFIG}"));
    let pid = s.child.id();
    rt.block_on(async {
        let url = s.url();
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(raw_post(&url, &[]).await, 401, "no token");
        assert_eq!(
            raw_post(&url, &[("authorization", "Bearer wrong-token-1234567")]).await,
            401
        );
        assert_eq!(raw_post(&url, &[("authorization", &bearer)]).await, 200);
        assert_eq!(
            raw_post(
                &url,
                &[("authorization", &bearer), ("host", "evil.example")]
            )
            .await,
            403,
            "a Host that is not loopback (DNS rebinding)"
        );
        assert_eq!(
            raw_post(&url, &[("authorization", &bearer), ("host", "localhost:1")]).await,
            200,
            "loopback names on any port"
        );
        assert_eq!(
            raw_post(
                &url,
                &[
                    ("authorization", &bearer),
                    ("origin", "http://evil.example")
                ]
            )
            .await,
            403,
            "a foreign browser origin"
        );
        assert_eq!(
            raw_post(
                &url,
                &[
                    ("authorization", &bearer),
                    ("origin", "http://localhost:3000")
                ]
            )
            .await,
            200
        );

        let c = http_client(&url, TOKEN).await;
        let tools = c.list_all_tools().await.unwrap();
        assert_eq!(tools.len(), 3);
        let r = call(&c, "run_python", json!({"code": "print(6 * 7)"})).await;
        assert_eq!(structured(&r)["stdout"], "42\n");
        let r = call(&c, "run_python", json!({"code": PNG_PROGRAM})).await;
        assert!(
            r.content.iter().any(|c| c.as_image().is_some()),
            "{}",
            text(&r)
        );

        // Cancellation over HTTP.
        let mut launchers = children_of(pid);
        let nonce = nonce();
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(
            CallToolRequestParams::new("run_python").with_arguments(args(json!({
                "code": format!("import subprocess\nsubprocess.run(['sleep', '3600.{nonce}'])"),
                "timeout": 60
            }))),
        ));
        let handle = c
            .send_cancellable_request(request, PeerRequestOptions::no_options())
            .await
            .unwrap();
        wait_until(
            Duration::from_secs(30),
            "the sandboxed sleep to start",
            || !sleepers(&nonce).is_empty(),
        )
        .await;
        launchers.extend(children_of(pid));
        handle.cancel(Some("test cancels".into())).await.unwrap();
        wait_until(
            Duration::from_secs(10),
            "the cancelled sandbox to die",
            || sleepers(&nonce).is_empty(),
        )
        .await;
        let r = call(&c, "run_python", json!({"code": "print('after')"})).await;
        assert_eq!(structured(&r)["stdout"], "after\n");
        let _ = c.cancel().await;
        launchers.extend(children_of(pid));
        s.stop();
        assert_all_gone(
            &launchers,
            Duration::from_secs(10),
            "after the server stopped",
        );
    });
    assert!(
        s.log().contains("tool call cancelled by the client"),
        "{}",
        s.log()
    );
}

/// Allowed hosts and origins come from `[mcp]`, for Docker and reverse proxies; `/mcp` can be
/// turned off; bad values are refused at start.
#[test]
fn http_mcp_follows_the_mcp_table() {
    let _g = setup!();
    let rt = runtime();
    {
        let s = Serve::start(
            "workers = 1\n[mcp]\nallowed_hosts = [\"kakoi.internal:8080\"]\nallowed_origins = [\"https://app.example.com\"]\n",
        );
        rt.block_on(async {
            let url = s.url();
            assert_eq!(
                raw_post(&url, &[]).await,
                403,
                "loopback is no longer listed"
            );
            assert_eq!(
                raw_post(&url, &[("host", "kakoi.internal:8080")]).await,
                200
            );
            assert_eq!(
                raw_post(&url, &[("host", "kakoi.internal:9090")]).await,
                403
            );
            assert_eq!(
                raw_post(
                    &url,
                    &[
                        ("host", "kakoi.internal:8080"),
                        ("origin", "https://app.example.com")
                    ]
                )
                .await,
                200
            );
            assert_eq!(
                raw_post(
                    &url,
                    &[
                        ("host", "kakoi.internal:8080"),
                        ("origin", "http://localhost:3000")
                    ]
                )
                .await,
                403
            );
        });
    }
    {
        let s = Serve::start("workers = 1\n[mcp]\nenabled = false\n");
        rt.block_on(async {
            assert_eq!(raw_post(&s.url(), &[]).await, 404);
        });
    }
    let (_dir, path) = config("[mcp]\nallowed_hosts = []\n");
    let out = kakoi_output(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mcp.allowed_hosts") && err.contains("empty"),
        "{err}"
    );
    let out = kakoi_output(&["mcp", "--config", path.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(125),
        "kakoi mcp reads the same file"
    );
}
