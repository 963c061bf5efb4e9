//! The tools: their arguments (serde + schemars, so the schema and the parser come from
//! one type), the descriptions an agent reads, and the translation into a [`Job`].
//!
//! The descriptions are written for a model deciding what to send: what the sandbox is,
//! the operator's limits (filled in from the running configuration), where files go and
//! come back, and what each status means.

use std::collections::BTreeMap;
use std::sync::Arc;

use rmcp::handler::server::common::schema_for_input;
use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::render;
use crate::cli::common::parse_size;
use crate::lint::{FormatMode, LintMode};
use crate::server::config::{LimitValues, RequestedLimits};
use crate::server::{Job, JobFile, Program, ServiceOptions};

/// `run_python`.
pub const RUN_PYTHON: &str = "run_python";
/// `run_command` (listed only when the operator enables commands).
pub const RUN_COMMAND: &str = "run_command";
/// `build_env`.
pub const BUILD_ENV: &str = "build_env";
/// `list_envs`.
pub const LIST_ENVS: &str = "list_envs";

/// Most files one call may place in the workdir (as the HTTP API).
pub const MAX_FILES: usize = 256;

/// Packages: the text of a requirements.txt, or one requirement per item.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(
    untagged,
    expecting = "a requirements.txt text (\"numpy==2.1.3\\npandas\") or a list of requirements ([\"numpy==2.1.3\", \"pandas\"])"
)]
pub enum Requirements {
    /// requirements.txt text.
    Text(String),
    /// One requirement per item.
    List(Vec<String>),
}

impl Requirements {
    fn into_text(self) -> Result<String, String> {
        match self {
            Requirements::Text(t) => Ok(t),
            Requirements::List(items) => {
                if let Some(bad) = items.iter().find(|i| i.contains(['\n', '\r'])) {
                    return Err(format!(
                        "requirements: the item {bad:?} contains a line break; give one requirement per item"
                    ));
                }
                Ok(items.join("\n") + "\n")
            }
        }
    }
}

/// A file's content: text, or `{"text": ...}`, or `{"base64": ...}` for binary data.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(
    untagged,
    expecting = "a string (the file's text), {\"text\": \"...\"} or {\"base64\": \"...\"}"
)]
pub enum FileContent {
    /// The file's text.
    Text(String),
    /// An object with exactly one of `text` or `base64`.
    Object(FileObject),
}

/// `{"text": ...}` or `{"base64": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileObject {
    /// UTF-8 text.
    pub text: Option<String>,
    /// Binary content, base64 (standard alphabet).
    pub base64: Option<String>,
}

/// Memory: bytes, or a size with a binary unit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(
    untagged,
    expecting = "bytes (268435456) or a size such as \"256M\" or \"1G\""
)]
pub enum Memory {
    /// Bytes.
    Bytes(u64),
    /// `64K`, `256M`, `1G`.
    Text(String),
}

/// `format`: run `ruff format` on the program first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FormatArg {
    /// No formatting (default).
    Off,
    /// Report whether formatting would change the program (with a diff); run it as sent.
    Check,
    /// Format the program and run the formatted version.
    Apply,
}

/// `lint`: run `ruff check` on the program first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LintArg {
    /// No linting (default).
    Off,
    /// Report diagnostics in the result, run anyway.
    Warn,
    /// Refuse to run a program with diagnostics (the call fails and lists them).
    Error,
}

/// Arguments of `run_python`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunPythonArgs {
    /// The Python program. It is saved as /work/main.py and run with /work as the current
    /// directory. Print results to stdout; write files to return (plots, CSVs) under out/
    /// (for example `plt.savefig("out/plot.png")`).
    pub code: String,
    /// Third-party packages the program imports, as pip requirements: a list
    /// (["numpy==2.1.3", "matplotlib"]) or requirements.txt text. The environment is built
    /// once (the first build downloads packages and can take a minute) and reused by every
    /// later call with the same requirements. Omit for the standard library only.
    pub requirements: Option<Requirements>,
    /// Files to place in /work before the run, by relative path: {"data.csv": "a,b\n1,2\n"}
    /// for text, {"img.bin": {"base64": "..."}} for binary data.
    pub files: Option<BTreeMap<String, FileContent>>,
    /// Text fed to the program's standard input.
    pub stdin: Option<String>,
    /// Wall-clock limit in seconds; the whole process tree is killed when it expires.
    pub timeout: Option<f64>,
    /// Memory limit: bytes or a size such as "512M".
    pub memory: Option<Memory>,
    /// Ask for the host's network (only when the operator allows it; off by default).
    pub network: Option<bool>,
    /// Run `ruff format` first: "check" reports a diff, "apply" runs the formatted code.
    pub format: Option<FormatArg>,
    /// Run `ruff check` first: "warn" reports diagnostics, "error" refuses to run code
    /// with any.
    pub lint: Option<LintArg>,
}

/// Arguments of `run_command`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCommandArgs {
    /// The program and its arguments, run directly (no shell): ["sh", "-c", "ls -l"] for a
    /// shell. The program is looked up in the sandbox's read-only system (/usr/bin, /bin);
    /// /work is the current directory.
    pub argv: Vec<String>,
    /// Files to place in /work before the run, by relative path: {"a.sh": "echo hi\n"} for
    /// text, {"tool": {"base64": "..."}} for binary data.
    pub files: Option<BTreeMap<String, FileContent>>,
    /// Text fed to the command's standard input.
    pub stdin: Option<String>,
    /// Wall-clock limit in seconds; the whole process tree is killed when it expires.
    pub timeout: Option<f64>,
    /// Memory limit: bytes or a size such as "512M".
    pub memory: Option<Memory>,
    /// Ask for the host's network (only when the operator allows it; off by default).
    pub network: Option<bool>,
}

/// Arguments of `build_env`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildEnvArgs {
    /// The packages, as pip requirements: a list (["numpy==2.1.3", "pandas"]) or
    /// requirements.txt text. run_python with the same requirements then starts at once.
    pub requirements: Requirements,
}

/// Arguments of `list_envs` (none).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListEnvsArgs {}

/// Parse a tool's arguments, with a message naming the problem (unknown field, wrong type).
pub fn parse_args<T: serde::de::DeserializeOwned>(
    tool: &str,
    arguments: Option<JsonObject>,
) -> Result<T, String> {
    let value = Value::Object(arguments.unwrap_or_default());
    serde_json::from_value(value).map_err(|e| format!("invalid arguments for {tool}: {e}"))
}

fn files_of(files: Option<BTreeMap<String, FileContent>>) -> Result<Vec<JobFile>, String> {
    use base64::Engine as _;
    let files = files.unwrap_or_default();
    if files.len() > MAX_FILES {
        return Err(format!(
            "files: {} files given, at most {MAX_FILES}",
            files.len()
        ));
    }
    let mut out = Vec::with_capacity(files.len());
    for (name, content) in files {
        let content = match content {
            FileContent::Text(t)
            | FileContent::Object(FileObject {
                text: Some(t),
                base64: None,
            }) => t.into_bytes(),
            FileContent::Object(FileObject {
                text: None,
                base64: Some(b),
            }) => base64::engine::general_purpose::STANDARD
                .decode(b.trim().as_bytes())
                .map_err(|e| format!("files.{name}.base64 is not valid base64: {e}"))?,
            FileContent::Object(_) => {
                return Err(format!(
                    "files.{name}: give exactly one of \"text\" or \"base64\""
                ));
            }
        };
        out.push(JobFile { name, content });
    }
    Ok(out)
}

fn limits_of(timeout: Option<f64>, memory: Option<Memory>) -> Result<RequestedLimits, String> {
    if let Some(t) = timeout
        && !(t.is_finite() && t > 0.0)
    {
        return Err(format!("timeout {t} is not a positive number of seconds"));
    }
    let memory = match memory {
        None => None,
        Some(Memory::Bytes(b)) => Some(b),
        Some(Memory::Text(t)) => Some(parse_size(&t).map_err(|e| format!("memory: {e}"))?),
    };
    Ok(RequestedLimits {
        timeout,
        memory,
        pids: None,
        cpus: None,
    })
}

impl RunPythonArgs {
    /// The job these arguments ask for.
    pub fn into_job(self) -> Result<Job, String> {
        Ok(Job {
            program: Program::Python { code: self.code },
            requirements: self.requirements.map(Requirements::into_text).transpose()?,
            files: files_of(self.files)?,
            stdin: self.stdin.map(String::into_bytes),
            limits: limits_of(self.timeout, self.memory)?,
            network: self.network.unwrap_or(false),
            format: match self.format {
                None | Some(FormatArg::Off) => FormatMode::Off,
                Some(FormatArg::Check) => FormatMode::Check,
                Some(FormatArg::Apply) => FormatMode::Apply,
            },
            lint: match self.lint {
                None | Some(LintArg::Off) => LintMode::Off,
                Some(LintArg::Warn) => LintMode::Warn,
                Some(LintArg::Error) => LintMode::Error,
            },
            backend: None,
        })
    }
}

impl RunCommandArgs {
    /// The job these arguments ask for.
    pub fn into_job(self) -> Result<Job, String> {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err(
                "argv is empty: give the program and its arguments, e.g. [\"ls\", \"-l\"]".into(),
            );
        }
        if self.argv.iter().any(|a| a.contains('\0')) {
            return Err("argv contains a NUL byte".into());
        }
        Ok(Job {
            program: Program::Command { argv: self.argv },
            requirements: None,
            files: files_of(self.files)?,
            stdin: self.stdin.map(String::into_bytes),
            limits: limits_of(self.timeout, self.memory)?,
            network: self.network.unwrap_or(false),
            format: FormatMode::Off,
            lint: LintMode::Off,
            backend: None,
        })
    }
}

impl BuildEnvArgs {
    /// The requirements text.
    pub fn into_text(self) -> Result<String, String> {
        self.requirements.into_text()
    }
}

fn seconds(s: f64) -> String {
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s} s")
    }
}

/// Sizes as a person writes them (`256 MiB`).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if b >= size && b % size == 0 {
            return format!("{} {unit}", b / size);
        }
        if b >= size {
            return format!("{:.1} {unit}", b as f64 / size as f64);
        }
    }
    format!("{b} bytes")
}

/// ` (a call may ask for up to X)` when the maximum is above the default.
fn up_to(higher: bool, max: impl FnOnce() -> String) -> String {
    if higher {
        format!(" (a call may ask for up to {})", max())
    } else {
        String::new()
    }
}

/// What every run gets, in the operator's numbers.
fn sandbox_paragraph(options: &ServiceOptions) -> String {
    let d: &LimitValues = &options.policy.defaults;
    let m: &LimitValues = &options.policy.max;
    let network = if options.policy.allow_network {
        "The network is off unless the call sets network: true (this server allows it)."
    } else {
        "There is no network (no DNS, no internet, no pip install at run time; use requirements)."
    };
    format!(
        "It runs in a fresh Linux sandbox (namespaces, seccomp, Landlock, cgroup limits) as an \
         unprivileged user, with a read-only system, a private writable /work (the current \
         directory) and /tmp of {tmp} each, and nothing kept between calls. {network} Limits: \
         wall-clock timeout {dt}{mt}, memory {dm}{mm}, {pids} processes, {cpus} CPU, {out} of output per stream (the rest is dropped). Files \
         the program writes under out/ (that is /work/out) come back with the result: images \
         (PNG, JPEG, GIF, WebP) as images, other files as embedded resources (at most {nfiles} \
         files, {files} in total).",
        tmp = human_bytes(d.tmp_size),
        dt = seconds(d.timeout),
        mt = up_to(d.timeout < m.timeout, || seconds(m.timeout)),
        dm = human_bytes(d.memory),
        mm = up_to(d.memory < m.memory, || human_bytes(m.memory)),
        pids = d.pids,
        cpus = d.cpus,
        out = human_bytes(d.output_limit),
        nfiles = options.files.max_files,
        files = human_bytes(options.files.max_total_bytes),
    )
}

const STATUS_PARAGRAPH: &str = "The result's status says how the program ended: ok (exit code 0), \
runtime_error (non-zero exit: read stderr), timeout (killed at the wall-clock limit), \
cpu_timeout, oom (killed for going over the memory limit), output_limit (output over the cap), \
signaled, seccomp_violation (a forbidden system call; the sandbox was killed), cancelled. \
These are normal results, not tool errors: fix the program and call again. The call itself \
fails (isError) only when nothing could run: invalid arguments, limits over the maximum, \
packages that cannot be installed (uv's message is included), lint=error diagnostics, a full \
queue, or a sandbox that could not be set up.";

/// The descriptions and schemas of the tools this server lists.
#[derive(Debug, Clone)]
pub struct ToolSet {
    tools: Vec<Tool>,
}

impl ToolSet {
    /// Tools for a service with these options: `run_command` only when commands are
    /// enabled, the `network` argument only when the operator allows the network.
    pub fn new(options: &ServiceOptions, python: &str) -> ToolSet {
        let sandbox = sandbox_paragraph(options);
        let run_result = render::run_result_schema();
        let mut tools = Vec::new();

        let mut run_python = input_schema::<RunPythonArgs>();
        describe_limits(&mut run_python, options);
        if !options.policy.allow_network {
            remove_property(&mut run_python, "network");
        }
        tools.push(
            Tool::new(
                RUN_PYTHON,
                format!(
                    "Run a Python program ({python}) and get its output. {sandbox} Packages: pass \
                     requirements (pip syntax); they are installed once into a cached \
                     environment (see build_env). {STATUS_PARAGRAPH} The text result summarizes \
                     status, exit code, time and the heads and tails of stdout and stderr; \
                     structuredContent has the full result."
                ),
                Arc::new(run_python),
            )
            .with_title("Run Python in a sandbox")
            .with_raw_output_schema(run_result.clone())
            .with_annotations(annotations("Run Python in a sandbox", options)),
        );

        if options.allow_commands {
            let mut run_command = input_schema::<RunCommandArgs>();
            describe_limits(&mut run_command, options);
            if !options.policy.allow_network {
                remove_property(&mut run_command, "network");
            }
            tools.push(
                Tool::new(
                    RUN_COMMAND,
                    format!(
                        "Run a command (argv, no shell unless you call one) for non-Python work: \
                         shell scripts, compilers and tools installed on the server. {sandbox} \
                         {STATUS_PARAGRAPH}"
                    ),
                    Arc::new(run_command),
                )
                .with_title("Run a command in a sandbox")
                .with_raw_output_schema(run_result)
                .with_annotations(annotations("Run a command in a sandbox", options)),
            );
        }

        tools.push(
            Tool::new(
                BUILD_ENV,
                "Prepare a Python environment for these requirements ahead of run_python, so \
                 that later runs with the same requirements start at once. Packages are resolved \
                 and installed with uv (with network access, in a sandbox); the environment is \
                 cached by content. Returns its digest, whether it already existed and the build \
                 time. Fails (isError) with uv's message when a package cannot be found or built.",
                Arc::new(input_schema::<BuildEnvArgs>()),
            )
            .with_title("Build a Python environment")
            .with_raw_output_schema(render::env_use_schema())
            .with_annotations(
                ToolAnnotations::with_title("Build a Python environment")
                    .read_only(false)
                    .destructive(false)
                    .idempotent(true)
                    .open_world(true),
            ),
        );
        tools.push(
            Tool::new(
                LIST_ENVS,
                "List the Python environments already built on this server (digest, \
                 requirements, size). run_python with one of these requirements starts without \
                 installing anything.",
                Arc::new(input_schema::<ListEnvsArgs>()),
            )
            .with_title("List Python environments")
            .with_raw_output_schema(render::env_list_schema())
            .with_annotations(
                ToolAnnotations::with_title("List Python environments")
                    .read_only(true)
                    .destructive(false)
                    .idempotent(true)
                    .open_world(false),
            ),
        );
        ToolSet { tools }
    }

    /// Every tool listed.
    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }

    /// One tool by name.
    pub fn get(&self, name: &str) -> Option<&Tool> {
        self.tools.iter().find(|t| t.name == name)
    }
}

fn annotations(title: &str, options: &ServiceOptions) -> ToolAnnotations {
    // Runs change nothing outside their sandbox, which is thrown away; they reach the outside
    // world only when the operator allows the network.
    ToolAnnotations::with_title(title)
        .read_only(true)
        .destructive(false)
        .idempotent(false)
        .open_world(options.policy.allow_network)
}

fn input_schema<T: JsonSchema + 'static>() -> JsonObject {
    schema_for_input::<T>()
        .expect("tool arguments are objects")
        .as_ref()
        .clone()
}

fn remove_property(schema: &mut JsonObject, name: &str) {
    if let Some(Value::Object(props)) = schema.get_mut("properties") {
        props.remove(name);
    }
}

/// Append the operator's numbers to the `timeout` and `memory` descriptions.
fn describe_limits(schema: &mut JsonObject, options: &ServiceOptions) {
    let d = &options.policy.defaults;
    let m = &options.policy.max;
    let Some(Value::Object(props)) = schema.get_mut("properties") else {
        return;
    };
    let mut add = |name: &str, text: String| {
        if let Some(Value::Object(p)) = props.get_mut(name) {
            let old = p
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            p.insert("description".into(), Value::String(format!("{old} {text}")));
        }
    };
    add(
        "timeout",
        format!(
            "Default {}, at most {} on this server (more is refused).",
            seconds(d.timeout),
            seconds(m.timeout)
        ),
    );
    add(
        "memory",
        format!(
            "Default {}, at most {} on this server (more is refused).",
            human_bytes(d.memory),
            human_bytes(m.memory)
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::config::Policy;

    fn options(allow_commands: bool, allow_network: bool) -> ServiceOptions {
        ServiceOptions {
            policy: Policy {
                defaults: LimitValues::default(),
                max: LimitValues {
                    timeout: 60.0,
                    memory: 1 << 30,
                    ..LimitValues::default()
                },
                allow_network,
            },
            python: "/usr/bin/python3".into(),
            ruff: None,
            allow_commands,
            files: crate::spec::Collect::default(),
            backend: crate::server::config::BackendKind::Native,
        }
    }

    fn args(v: Value) -> Option<JsonObject> {
        match v {
            Value::Object(o) => Some(o),
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn run_python_arguments_become_a_job() {
        let a: RunPythonArgs = parse_args(
            RUN_PYTHON,
            args(serde_json::json!({
                "code": "print(1)",
                "requirements": ["numpy==2.1.3", "rich"],
                "files": {"a.txt": "hi", "b.bin": {"base64": "AP8="}, "c.txt": {"text": "c"}},
                "stdin": "in",
                "timeout": 2.5,
                "memory": "64M",
                "lint": "warn",
                "format": "apply"
            })),
        )
        .unwrap();
        let job = a.into_job().unwrap();
        assert_eq!(
            job.program,
            Program::Python {
                code: "print(1)".into()
            }
        );
        assert_eq!(job.requirements.as_deref(), Some("numpy==2.1.3\nrich\n"));
        assert_eq!(job.files.len(), 3);
        assert_eq!(job.files[1].content, vec![0, 255]);
        assert_eq!(job.limits.timeout, Some(2.5));
        assert_eq!(job.limits.memory, Some(64 << 20));
        assert_eq!((job.format, job.lint), (FormatMode::Apply, LintMode::Warn));
        let text: RunPythonArgs = parse_args(
            RUN_PYTHON,
            args(serde_json::json!({"code": "x", "requirements": "numpy\n", "memory": 1024})),
        )
        .unwrap();
        let job = text.into_job().unwrap();
        assert_eq!(job.requirements.as_deref(), Some("numpy\n"));
        assert_eq!(job.limits.memory, Some(1024));
    }

    #[test]
    fn bad_arguments_say_what_is_wrong() {
        let e = |v: Value| {
            parse_args::<RunPythonArgs>(RUN_PYTHON, args(v))
                .and_then(RunPythonArgs::into_job)
                .unwrap_err()
        };
        for (v, needle) in [
            (serde_json::json!({}), "missing field `code`"),
            (
                serde_json::json!({"code": "x", "timout": 1}),
                "unknown field `timout`",
            ),
            (
                serde_json::json!({"code": "x", "timeout": "soon"}),
                "invalid type",
            ),
            (serde_json::json!({"code": "x", "timeout": -1}), "positive"),
            (serde_json::json!({"code": "x", "memory": "lots"}), "memory"),
            (
                serde_json::json!({"code": "x", "memory": true}),
                "a size such as",
            ),
            (
                serde_json::json!({"code": "x", "files": {"a": 3}}),
                "the file's text",
            ),
            (
                serde_json::json!({"code": "x", "files": {"a": {}}}),
                "exactly one",
            ),
            (
                serde_json::json!({"code": "x", "files": {"a": {"base64": "!!"}}}),
                "files.a.base64",
            ),
            (
                serde_json::json!({"code": "x", "requirements": ["a\nb"]}),
                "line break",
            ),
            (
                serde_json::json!({"code": "x", "requirements": 3}),
                "requirements.txt text",
            ),
            (
                serde_json::json!({"code": "x", "lint": "loud"}),
                "unknown variant",
            ),
        ] {
            let msg = e(v.clone());
            assert!(msg.contains(needle), "{v}: {msg}");
        }
        let e = parse_args::<RunCommandArgs>(RUN_COMMAND, args(serde_json::json!({"argv": []})))
            .and_then(RunCommandArgs::into_job)
            .unwrap_err();
        assert!(e.contains("argv is empty"), "{e}");
    }

    #[test]
    fn the_tool_list_follows_the_operator() {
        let names = |t: &ToolSet| {
            t.tools()
                .iter()
                .map(|t| t.name.to_string())
                .collect::<Vec<_>>()
        };
        let plain = ToolSet::new(&options(false, false), "python3");
        assert_eq!(names(&plain), [RUN_PYTHON, BUILD_ENV, LIST_ENVS]);
        let run = plain.get(RUN_PYTHON).unwrap();
        let props = run.input_schema["properties"].as_object().unwrap();
        assert!(!props.contains_key("network"));
        for key in [
            "code",
            "requirements",
            "files",
            "stdin",
            "timeout",
            "memory",
        ] {
            assert!(props.contains_key(key), "{key}");
        }
        assert_eq!(run.input_schema["required"], serde_json::json!(["code"]));
        let timeout = props["timeout"]["description"].as_str().unwrap();
        assert!(timeout.contains("Default 10 s, at most 60 s"), "{timeout}");
        let memory = props["memory"]["description"].as_str().unwrap();
        assert!(
            memory.contains("Default 256 MiB, at most 1 GiB"),
            "{memory}"
        );
        let description = run.description.as_deref().unwrap();
        assert!(description.contains("no network"), "{description}");
        assert!(description.contains("out/"), "{description}");
        assert!(run.output_schema.is_some());

        let open = ToolSet::new(&options(true, true), "python3");
        assert_eq!(
            names(&open),
            [RUN_PYTHON, RUN_COMMAND, BUILD_ENV, LIST_ENVS]
        );
        let props = open.get(RUN_COMMAND).unwrap().input_schema["properties"]
            .as_object()
            .unwrap()
            .clone();
        assert!(props.contains_key("network"));
        assert!(props.contains_key("argv"));
    }

    #[test]
    fn sizes_read_like_a_person_wrote_them() {
        assert_eq!(human_bytes(256 << 20), "256 MiB");
        assert_eq!(human_bytes(1 << 30), "1 GiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 bytes");
    }
}
