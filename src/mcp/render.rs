//! Results as MCP sees them: the result contract as `structuredContent` (with output schemas
//! derived from the same types as the HTTP API's OpenAPI document), a short text summary for
//! the model, and returned files as content blocks — images (recognised by their magic
//! bytes) as image content, everything else as embedded resources.
//!
//! `isError` is set when the tool could not do its job: nothing ran (invalid arguments,
//! limits over the maximum, an environment that cannot be built, `lint=error`, a full queue)
//! or the sandbox could not be set up (`setup_error`). A program that ran and failed
//! (`runtime_error`, `timeout`, `oom`, ...) is a normal result: the tool worked, and the
//! status, stderr and exit code are what the model needs to fix its program.

use std::sync::{Arc, LazyLock};

use base64::Engine as _;
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, ResourceContents};
use serde_json::Value;

use super::tools::human_bytes;
use crate::result::{EnvUse, OutputFile, RunResult, Status};
use crate::server::{EnvSummary, ErrorKind, ServiceError};

/// Characters of each stream shown from its start in the summary.
pub const HEAD_CHARS: usize = 6000;
/// Characters of each stream shown from its end when the middle is cut (tracebacks end
/// there).
pub const TAIL_CHARS: usize = 3000;

/// The output schema of `run_python` and `run_command`: the result contract.
pub fn run_result_schema() -> Arc<JsonObject> {
    static SCHEMA: LazyLock<Arc<JsonObject>> =
        LazyLock::new(|| Arc::new(component_schema("RunResult")));
    SCHEMA.clone()
}

/// The output schema of `build_env`.
pub fn env_use_schema() -> Arc<JsonObject> {
    static SCHEMA: LazyLock<Arc<JsonObject>> =
        LazyLock::new(|| Arc::new(component_schema("EnvUse")));
    SCHEMA.clone()
}

/// The output schema of `list_envs`: `{"envs": [...]}`.
pub fn env_list_schema() -> Arc<JsonObject> {
    static SCHEMA: LazyLock<Arc<JsonObject>> =
        LazyLock::new(|| Arc::new(component_schema("EnvList")));
    SCHEMA.clone()
}

/// A component of the HTTP API's OpenAPI document as a self-contained JSON Schema
/// (2020-12): the schema itself, with every component it reaches under `$defs`.
fn component_schema(name: &str) -> JsonObject {
    let doc = serde_json::to_value(crate::server::http::openapi())
        .expect("the OpenAPI document serializes");
    let components = doc["components"]["schemas"]
        .as_object()
        .expect("the OpenAPI document has component schemas")
        .clone();
    let mut needed = std::collections::BTreeSet::new();
    let mut todo = vec![name.to_owned()];
    while let Some(n) = todo.pop() {
        if !needed.insert(n.clone()) {
            continue;
        }
        let schema = components
            .get(&n)
            .unwrap_or_else(|| panic!("component {n} is in the OpenAPI document"));
        collect_refs(schema, &mut todo);
    }
    let rewrite = |v: &Value| {
        let text = serde_json::to_string(v).expect("serializes");
        serde_json::from_str::<Value>(&text.replace("#/components/schemas/", "#/$defs/"))
            .expect("still JSON")
    };
    let Value::Object(mut root) = rewrite(&components[name]) else {
        panic!("component {name} is an object schema");
    };
    let defs: JsonObject = needed
        .iter()
        .filter(|n| n.as_str() != name)
        .map(|n| (n.clone(), rewrite(&components[n])))
        .collect();
    if !defs.is_empty() {
        root.insert("$defs".into(), Value::Object(defs));
    }
    root.insert(
        "$schema".into(),
        Value::String("https://json-schema.org/draft/2020-12/schema".into()),
    );
    root
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                if k == "$ref"
                    && let Some(name) = v
                        .as_str()
                        .and_then(|r| r.strip_prefix("#/components/schemas/"))
                {
                    out.push(name.to_owned());
                } else {
                    collect_refs(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// The image type of `bytes`, by magic number.
pub fn image_type(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// A MIME type for a non-image file, from its extension.
fn mime_for(path: &str, text: bool) -> &'static str {
    let ext = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "log" => "text/plain",
        "csv" => "text/csv",
        "tsv" => "text/tab-separated-values",
        "json" => "application/json",
        "jsonl" | "ndjson" => "application/x-ndjson",
        "md" => "text/markdown",
        "html" | "htm" => "text/html",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "py" => "text/x-python",
        "yaml" | "yml" => "application/yaml",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "parquet" => "application/vnd.apache.parquet",
        _ if text => "text/plain",
        _ => "application/octet-stream",
    }
}

/// The URI a returned file gets: where it was in the sandbox, under a scheme of its own so
/// no client mistakes it for a local file.
pub fn file_uri(path: &str) -> String {
    let mut uri = String::from("sandbox:/work/out/");
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri
}

/// How one returned file reaches the model.
enum Attached {
    Image(&'static str),
    Resource(&'static str),
    Skipped(String),
}

fn attach(file: &OutputFile) -> (Option<ContentBlock>, Attached) {
    let Some(b64) = &file.base64 else {
        let why = file
            .skipped
            .clone()
            .unwrap_or_else(|| "not returned".into());
        return (None, Attached::Skipped(why));
    };
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64) else {
        return (None, Attached::Skipped("undecodable".into()));
    };
    if let Some(mime) = image_type(&bytes) {
        return (
            Some(ContentBlock::image(b64.clone(), mime)),
            Attached::Image(mime),
        );
    }
    let uri = file_uri(&file.path);
    match String::from_utf8(bytes) {
        Ok(text) if !text.contains('\0') => {
            let mime = mime_for(&file.path, true);
            let resource = ResourceContents::text(text, uri).with_mime_type(mime);
            (
                Some(ContentBlock::resource(resource)),
                Attached::Resource(mime),
            )
        }
        _ => {
            let mime = mime_for(&file.path, false);
            let resource = ResourceContents::blob(b64.clone(), uri).with_mime_type(mime);
            (
                Some(ContentBlock::resource(resource)),
                Attached::Resource(mime),
            )
        }
    }
}

/// A run's result as a tool result: summary text, then one block per returned file, and the
/// whole result as structured content.
pub fn run_result(result: &RunResult) -> CallToolResult {
    let mut blocks = Vec::new();
    let mut attached = Vec::new();
    for file in &result.files {
        let (block, how) = attach(file);
        blocks.extend(block);
        attached.push((file, how));
    }
    let mut content = vec![ContentBlock::text(summary(result, &attached))];
    content.extend(blocks);
    let mut out = CallToolResult::success(content);
    out.structured_content =
        Some(serde_json::to_value(result).expect("a run result serializes to JSON"));
    out.is_error = Some(result.status == Status::SetupError);
    out
}

fn status_name(status: Status) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{status:?}"))
}

fn status_line(r: &RunResult) -> String {
    let what = match r.status {
        Status::Ok => "the program exited with code 0".to_owned(),
        Status::RuntimeError => format!(
            "the program exited with code {}",
            r.exit_code.map_or("?".into(), |c| c.to_string())
        ),
        Status::Timeout => "killed at the wall-clock time limit (ask for a longer timeout, or make the program faster)".into(),
        Status::CpuTimeout => "killed at the CPU time limit".into(),
        Status::Oom => "killed for going over the memory limit (ask for more memory, or use less)".into(),
        Status::OutputLimit => "output went over the cap; the rest was dropped and the program was stopped".into(),
        Status::Signaled => format!(
            "killed by {}",
            r.signal_name
                .clone()
                .or(r.signal.map(|s| format!("signal {s}")))
                .unwrap_or_else(|| "a signal".into())
        ),
        Status::SeccompViolation => format!(
            "stopped: the program made a forbidden system call{}",
            r.seccomp_syscall
                .as_ref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        ),
        Status::SetupError => format!(
            "the sandbox could not be set up; nothing ran{}",
            r.error
                .as_ref()
                .map(|e| format!(": {}", e.message))
                .unwrap_or_default()
        ),
        Status::EnvError => "the environment could not be built; nothing ran".into(),
        Status::Cancelled => "cancelled; the sandbox was killed".into(),
    };
    let mut line = format!(
        "status: {} ({what}); wall time {:.0} ms, CPU {:.0} ms",
        status_name(r.status),
        r.wall_ms,
        r.cpu_user_ms + r.cpu_sys_ms
    );
    if let Some(peak) = r.peak_memory_bytes {
        line.push_str(&format!(", peak memory {}", human_bytes(peak)));
    }
    line
}

/// `text` cut to its head and tail with a marker saying what was left out and where the
/// whole is.
pub fn head_and_tail(text: &str, field: &str) -> String {
    let chars = text.chars().count();
    if chars <= HEAD_CHARS + TAIL_CHARS {
        return text.to_owned();
    }
    let head: String = text.chars().take(HEAD_CHARS).collect();
    let tail: String = text.chars().skip(chars - TAIL_CHARS).collect();
    let omitted = chars - HEAD_CHARS - TAIL_CHARS;
    format!(
        "{head}\n[... {omitted} characters omitted; the full text is in structuredContent.{field} ...]\n{tail}"
    )
}

fn stream_section(name: &str, text: &str, truncated: bool, not_utf8: bool) -> String {
    if text.is_empty() && !truncated {
        return format!("{name}: (empty)\n");
    }
    let mut s = format!("{name} ({} bytes):\n", text.len());
    s.push_str(&head_and_tail(text, name));
    if !s.ends_with('\n') {
        s.push('\n');
    }
    if not_utf8 {
        s.push_str(&format!(
            "[{name} is not valid UTF-8: invalid sequences were replaced; the exact bytes are in structuredContent.{name}_base64]\n"
        ));
    }
    if truncated {
        s.push_str(&format!(
            "[{name} went over the server's output limit: the rest was dropped]\n"
        ));
    }
    s
}

fn summary(r: &RunResult, attached: &[(&OutputFile, Attached)]) -> String {
    let mut s = status_line(r);
    s.push('\n');
    if let Some(env) = &r.env {
        s.push_str(&format!(
            "environment: {} ({})\n",
            &env.digest[..env.digest.len().min(16)],
            if env.cache_hit {
                "already built".to_owned()
            } else {
                format!("built in {:.1} s", env.build_ms / 1000.0)
            }
        ));
    }
    if let Some(format) = &r.format {
        match (&format.error, format.changed) {
            (Some(e), _) => {
                s.push_str(&format!("format: ruff could not format the program: {e}\n"))
            }
            (None, true) if format.mode == "apply" => {
                s.push_str("format: the program was reformatted before it ran\n")
            }
            (None, true) => s.push_str(&format!(
                "format: ruff would change the program:\n{}\n",
                head_and_tail(&format.diff, "format.diff")
            )),
            (None, false) => s.push_str("format: already formatted\n"),
        }
    }
    if let Some(lint) = &r.lint {
        if lint.diagnostics.is_empty() {
            s.push_str("lint: no diagnostics\n");
        } else {
            s.push_str(&format!("lint: {} diagnostic(s)\n", lint.diagnostics.len()));
            for d in lint.diagnostics.iter().take(20) {
                s.push_str(&format!(
                    "  {}:{} {} {}\n",
                    d.line, d.column, d.code, d.message
                ));
            }
        }
    }
    s.push_str(&stream_section(
        "stdout",
        &r.stdout,
        r.stdout_truncated,
        r.stdout_base64.is_some(),
    ));
    s.push_str(&stream_section(
        "stderr",
        &r.stderr,
        r.stderr_truncated,
        r.stderr_base64.is_some(),
    ));
    if !attached.is_empty() {
        s.push_str("files returned from out/:\n");
        for (file, how) in attached {
            let how = match how {
                Attached::Image(mime) => format!("{mime}, attached as an image"),
                Attached::Resource(mime) => {
                    format!("{mime}, attached as {}", file_uri(&file.path))
                }
                Attached::Skipped(why) => format!("not returned: {why}"),
            };
            s.push_str(&format!(
                "  out/{} ({}; {how})\n",
                file.path,
                human_bytes(file.size)
            ));
        }
    }
    s
}

/// A request that produced no result, as a tool error the model can act on.
pub fn service_error(e: &ServiceError) -> CallToolResult {
    let mut text = format!("{}: {}", e.kind.code(), e.message);
    match (e.kind, &e.detail) {
        (ErrorKind::EnvFailed, Some(detail)) => {
            if let Some(uv) = detail.get("uv").and_then(Value::as_str) {
                text.push_str("\n\nuv said:\n");
                text.push_str(&head_and_tail(uv.trim_end(), "uv"));
            }
        }
        (ErrorKind::LintFailed, Some(detail)) => {
            if let Some(diags) = detail["lint"]["diagnostics"].as_array() {
                text.push_str("\n\nruff check:\n");
                for d in diags.iter().take(50) {
                    text.push_str(&format!(
                        "  {}:{} {} {}\n",
                        d["line"],
                        d["column"],
                        d["code"].as_str().unwrap_or("?"),
                        d["message"].as_str().unwrap_or("")
                    ));
                }
            }
        }
        (_, Some(detail)) => {
            text.push_str("\n\n");
            text.push_str(&serde_json::to_string_pretty(detail).unwrap_or_default());
        }
        (_, None) => {}
    }
    match e.kind {
        ErrorKind::QueueFull | ErrorKind::QueueTimeout => {
            text.push_str("\n(the server is busy: try again shortly)")
        }
        ErrorKind::ShuttingDown => text.push_str("\n(the server is shutting down)"),
        _ => {}
    }
    CallToolResult::error(vec![ContentBlock::text(text)])
}

/// A tool error for arguments that cannot be used.
pub fn invalid_arguments(message: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message)])
}

/// `build_env`'s result.
pub fn env_built(env: &EnvUse) -> CallToolResult {
    let text = if env.cache_hit {
        format!("environment {} is ready (it was already built)", env.digest)
    } else {
        format!(
            "environment {} is ready (built in {:.1} s)",
            env.digest,
            env.build_ms / 1000.0
        )
    };
    let mut out = CallToolResult::success(vec![ContentBlock::text(text)]);
    out.structured_content = Some(serde_json::to_value(env).expect("serializes"));
    out
}

/// `list_envs`'s result.
pub fn env_list(envs: &[EnvSummary]) -> CallToolResult {
    let mut text = if envs.is_empty() {
        "no environments are built yet".to_owned()
    } else {
        format!("{} environment(s):\n", envs.len())
    };
    for e in envs {
        let reqs: Vec<&str> = e
            .requirements
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        text.push_str(&format!(
            "  {} {}{}\n",
            &e.digest[..e.digest.len().min(16)],
            reqs.join(", "),
            e.size_bytes
                .map(|b| format!(" ({})", human_bytes(b)))
                .unwrap_or_default()
        ));
    }
    let mut out = CallToolResult::success(vec![ContentBlock::text(text)]);
    out.structured_content = Some(serde_json::json!({ "envs": envs }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::{Isolation, Timings};

    fn result(status: Status) -> RunResult {
        RunResult {
            status,
            exit_code: Some(if status == Status::Ok { 0 } else { 1 }),
            signal: None,
            signal_name: None,
            stdout: "hello\n".into(),
            stderr: String::new(),
            stdout_base64: None,
            stderr_base64: None,
            stdout_truncated: false,
            stderr_truncated: false,
            wall_ms: 12.0,
            cpu_user_ms: 5.0,
            cpu_sys_ms: 3.0,
            peak_memory_bytes: Some(8 << 20),
            oom_killed: false,
            seccomp_syscall: None,
            error: None,
            timings: Timings::default(),
            isolation: Isolation::default(),
            backend: "native".into(),
            files: Vec::new(),
            env: None,
            lint: None,
            format: None,
        }
    }

    fn file(path: &str, bytes: &[u8]) -> OutputFile {
        OutputFile {
            path: path.into(),
            size: bytes.len() as u64,
            base64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            skipped: None,
        }
    }

    #[test]
    fn images_are_recognised_by_their_magic_bytes() {
        assert_eq!(image_type(b"\x89PNG\r\n\x1a\nrest"), Some("image/png"));
        assert_eq!(image_type(&[0xff, 0xd8, 0xff, 0xe0]), Some("image/jpeg"));
        assert_eq!(image_type(b"GIF89a..."), Some("image/gif"));
        assert_eq!(image_type(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(image_type(b"RIFF\0\0\0\0WAVE"), None);
        assert_eq!(image_type(b"<svg/>"), None);
        assert_eq!(image_type(b""), None);
    }

    #[test]
    fn files_become_images_text_and_blobs() {
        let mut r = result(Status::Ok);
        // A PNG named .dat is still an image: the bytes decide, not the name.
        r.files = vec![
            file("plot.dat", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
            file("table.csv", b"a,b\n1,2\n"),
            file("dir/raw bin", &[0, 1, 2, 255]),
            OutputFile {
                path: "big.npy".into(),
                size: 1 << 30,
                base64: None,
                skipped: Some("too_large".into()),
            },
        ];
        let out = run_result(&r);
        assert_eq!(out.is_error, Some(false));
        assert_eq!(out.content.len(), 4, "summary + 3 attached files");
        let image = out.content[1].as_image().unwrap();
        assert_eq!(image.mime_type, "image/png");
        let text = out.content[2].as_resource().unwrap();
        let v = serde_json::to_value(&text.resource).unwrap();
        assert_eq!(v["uri"], "sandbox:/work/out/table.csv");
        assert_eq!(v["mimeType"], "text/csv");
        assert_eq!(v["text"], "a,b\n1,2\n");
        let blob = serde_json::to_value(&out.content[3].as_resource().unwrap().resource).unwrap();
        assert_eq!(blob["uri"], "sandbox:/work/out/dir/raw%20bin");
        assert_eq!(blob["mimeType"], "application/octet-stream");
        assert_eq!(blob["blob"], "AAEC/w==");
        let summary = &out.content[0].as_text().unwrap().text;
        assert!(
            summary.contains("out/plot.dat (16 bytes; image/png, attached as an image)"),
            "{summary}"
        );
        assert!(
            summary.contains("out/big.npy (1 GiB; not returned: too_large)"),
            "{summary}"
        );
        assert_eq!(out.structured_content.as_ref().unwrap()["status"], "ok");
    }

    #[test]
    fn the_summary_says_how_the_run_ended() {
        let mut r = result(Status::Timeout);
        r.exit_code = None;
        r.signal = Some(9);
        r.stderr = "x".repeat(HEAD_CHARS + TAIL_CHARS + 10);
        let out = run_result(&r);
        assert_eq!(
            out.is_error,
            Some(false),
            "a timeout is a result, not a tool error"
        );
        let s = &out.content[0].as_text().unwrap().text;
        assert!(
            s.starts_with("status: timeout (killed at the wall-clock time limit"),
            "{s}"
        );
        assert!(s.contains("stdout (6 bytes):\nhello\n"), "{s}");
        assert!(
            s.contains(
                "[... 10 characters omitted; the full text is in structuredContent.stderr ...]"
            ),
            "{s}"
        );
        let mut r = result(Status::RuntimeError);
        r.stderr = "Traceback ...\nZeroDivisionError: division by zero\n".into();
        let s = run_result(&r).content[0].as_text().unwrap().text.clone();
        assert!(s.contains("exited with code 1"), "{s}");
        assert!(s.contains("ZeroDivisionError"), "{s}");
        let r = result(Status::SetupError);
        assert_eq!(run_result(&r).is_error, Some(true));
    }

    #[test]
    fn service_errors_are_tool_errors_with_the_cause() {
        let e = ServiceError::new(ErrorKind::EnvFailed, "cannot resolve requirements")
            .with_detail(serde_json::json!({"uv": "No solution found: nosuchpkg was not found"}));
        let out = service_error(&e);
        assert_eq!(out.is_error, Some(true));
        let t = &out.content[0].as_text().unwrap().text;
        assert!(
            t.starts_with("env_failed: cannot resolve requirements"),
            "{t}"
        );
        assert!(t.contains("nosuchpkg was not found"), "{t}");
    }

    #[test]
    fn output_schemas_are_self_contained() {
        let schema = run_result_schema();
        assert_eq!(schema["type"], "object");
        let text = serde_json::to_string(schema.as_ref()).unwrap();
        assert!(!text.contains("#/components/"), "{text}");
        for def in ["Status", "Isolation", "OutputFile", "Timings", "EnvUse"] {
            assert!(schema["$defs"].get(def).is_some(), "{def} missing");
        }
        assert!(
            schema["$defs"].get("ErrorBody").is_none(),
            "only what RunResult reaches"
        );
        assert_eq!(env_use_schema()["type"], "object");
        assert_eq!(env_list_schema()["properties"]["envs"]["type"], "array");
    }
}
