//! Parsing `POST /run` bodies (JSON and multipart) into a [`Job`]. Pure functions over bytes
//! and streams so they can be fuzzed and replayed from a corpus without a server.

use std::collections::BTreeMap;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::Stream;
use serde::Deserialize;

use super::config::{BackendKind, RequestedLimits};
use super::service::{ErrorKind, Job, JobFile, Program, ServiceError};
use crate::cli::common::parse_size;
use crate::lint::{FormatMode, LintMode};

/// Most files a request may carry.
pub const MAX_FILES: usize = 256;

/// The JSON body of `POST /run`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The program (`main.py`).
    pub code: String,
    /// The text of a requirements.txt.
    #[serde(default)]
    pub requirements: Option<String>,
    /// Files placed in the workdir, by relative path.
    #[serde(default)]
    pub files: BTreeMap<String, FileContent>,
    /// Standard input (text).
    #[serde(default)]
    pub stdin: Option<String>,
    /// Wall-clock timeout in seconds.
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Memory limit: bytes, or a string such as `"128M"`.
    #[serde(default)]
    pub memory: Option<SizeField>,
    /// Maximum number of processes and threads.
    #[serde(default)]
    pub pids: Option<u64>,
    /// CPU bandwidth in cores.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Ask for network access (only when the operator allows it).
    #[serde(default)]
    pub network: bool,
    /// `ruff format`: `off`, `check` or `apply`.
    #[serde(default)]
    pub format: FormatMode,
    /// `ruff check`: `off`, `warn` or `error`.
    #[serde(default)]
    pub lint: LintMode,
    /// Where the program runs: `native` (kakoi's sandbox) or `docker` (a container, when the
    /// operator enabled it; files are not returned there yet). Default: the server's.
    #[serde(default)]
    pub backend: Option<BackendKind>,
}

/// A file's content: exactly one of `text` or `base64`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileContent {
    /// UTF-8 text.
    #[serde(default)]
    pub text: Option<String>,
    /// Bytes in standard base64.
    #[serde(default)]
    pub base64: Option<String>,
}

/// A size: bytes, or a string with a binary unit.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum SizeField {
    /// Bytes.
    Bytes(u64),
    /// `64K`, `256M`, `1G`.
    Text(String),
}

/// The multipart form of `POST /run` (documentation of the parts; parsed by
/// [`job_from_multipart`]). Any other file part is placed in the workdir under its file name.
#[derive(Debug, Clone, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct RunForm {
    /// The program (required).
    #[schema(rename = "main.py", format = Binary, value_type = String)]
    pub main_py: Vec<u8>,
    /// requirements.txt (optional).
    #[schema(rename = "requirements.txt", format = Binary, value_type = Option<String>)]
    pub requirements_txt: Option<Vec<u8>>,
    /// Standard input (a field or a file).
    #[schema(value_type = Option<String>)]
    pub stdin: Option<String>,
    /// Seconds.
    pub timeout: Option<f64>,
    /// Bytes or `128M`.
    pub memory: Option<String>,
    /// Tasks.
    pub pids: Option<u64>,
    /// Cores.
    pub cpus: Option<f64>,
    /// `true`/`false`.
    pub network: Option<bool>,
    /// `off`, `check`, `apply`.
    pub format: Option<FormatMode>,
    /// `off`, `warn`, `error`.
    pub lint: Option<LintMode>,
    /// `native`, `docker`.
    pub backend: Option<BackendKind>,
}

fn bad(message: impl Into<String>) -> ServiceError {
    ServiceError::bad_request(message)
}

fn memory_bytes(m: &SizeField) -> Result<u64, ServiceError> {
    match m {
        SizeField::Bytes(b) => Ok(*b),
        SizeField::Text(t) => parse_size(t).map_err(|e| bad(format!("memory: {e}"))),
    }
}

/// Parse a JSON body.
pub fn job_from_json(body: &[u8]) -> Result<Job, ServiceError> {
    let req: RunRequest =
        serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))?;
    if req.files.len() > MAX_FILES {
        return Err(bad(format!("more than {MAX_FILES} files")));
    }
    let mut files = Vec::with_capacity(req.files.len());
    for (name, content) in req.files {
        let bytes = match (content.text, content.base64) {
            (Some(t), None) => t.into_bytes(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b.as_bytes())
                .map_err(|e| bad(format!("files.{name}.base64: {e}")))?,
            _ => {
                return Err(bad(format!(
                    "files.{name}: give exactly one of \"text\" or \"base64\""
                )));
            }
        };
        files.push(JobFile {
            name,
            content: bytes,
        });
    }
    Ok(Job {
        program: Program::Python { code: req.code },
        requirements: req.requirements,
        files,
        stdin: req.stdin.map(String::into_bytes),
        limits: RequestedLimits {
            timeout: req.timeout,
            memory: req.memory.as_ref().map(memory_bytes).transpose()?,
            pids: req.pids,
            cpus: req.cpus,
        },
        network: req.network,
        format: req.format,
        lint: req.lint,
        backend: req.backend,
    })
}

/// Parts collected from a multipart body.
#[derive(Debug, Default)]
struct Parts {
    main: Option<Vec<u8>>,
    requirements: Option<Vec<u8>>,
    stdin: Option<Vec<u8>>,
    options: BTreeMap<&'static str, String>,
    files: Vec<JobFile>,
}

const OPTIONS: &[&str] = &[
    "timeout", "memory", "pids", "cpus", "network", "format", "lint", "backend",
];

/// Parse a multipart body from a stream, refusing it (413) as soon as more than `limit`
/// bytes have arrived.
pub async fn job_from_multipart<S, E>(
    stream: S,
    boundary: &str,
    limit: u64,
) -> Result<Job, ServiceError>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let constraints =
        multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(limit));
    let mut mp = multer::Multipart::with_constraints(stream, boundary, constraints);
    let mut parts = Parts::default();
    while let Some(field) = mp.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_owned();
        let file_name = field.file_name().map(str::to_owned);
        let data = field.bytes().await.map_err(multipart_error)?.to_vec();
        let duplicate = || bad(format!("part {name:?} is given twice"));
        match name.as_str() {
            "main.py" => {
                if parts.main.replace(data).is_some() {
                    return Err(duplicate());
                }
            }
            "requirements.txt" => {
                if parts.requirements.replace(data).is_some() {
                    return Err(duplicate());
                }
            }
            "stdin" => {
                if parts.stdin.replace(data).is_some() {
                    return Err(duplicate());
                }
            }
            n if OPTIONS.contains(&n) && file_name.is_none() => {
                let key = OPTIONS.iter().find(|o| **o == n).expect("listed");
                let value = String::from_utf8(data)
                    .map_err(|_| bad(format!("field {n:?} is not UTF-8")))?;
                if parts.options.insert(key, value).is_some() {
                    return Err(duplicate());
                }
            }
            _ => match file_name {
                // `curl -F main.py=@x.py` has the name; `-F file=@main.py` the file name.
                Some(f) if f == "main.py" && parts.main.is_none() && name.is_empty() => {
                    parts.main = Some(data)
                }
                Some(f) if !f.is_empty() => {
                    if parts.files.len() >= MAX_FILES {
                        return Err(bad(format!("more than {MAX_FILES} files")));
                    }
                    parts.files.push(JobFile {
                        name: f,
                        content: data,
                    });
                }
                _ => {
                    return Err(bad(format!(
                        "unknown form field {name:?} (fields: main.py, requirements.txt, stdin, {}; other files need a file name)",
                        OPTIONS.join(", ")
                    )));
                }
            },
        }
    }
    parts_to_job(parts)
}

fn multipart_error(e: multer::Error) -> ServiceError {
    match e {
        multer::Error::StreamSizeExceeded { limit }
        | multer::Error::FieldSizeExceeded { limit, .. } => ServiceError::new(
            ErrorKind::PayloadTooLarge,
            format!("the request body is over the upload limit of {limit} bytes"),
        ),
        other => bad(format!("malformed multipart body: {other}")),
    }
}

fn parts_to_job(mut parts: Parts) -> Result<Job, ServiceError> {
    let main = parts
        .main
        .take()
        .ok_or_else(|| bad("the form has no main.py part"))?;
    let code = String::from_utf8(main).map_err(|_| bad("main.py is not UTF-8"))?;
    let requirements = parts
        .requirements
        .take()
        .map(|r| String::from_utf8(r).map_err(|_| bad("requirements.txt is not UTF-8")))
        .transpose()?;
    let opt = |k: &str| parts.options.get(k).map(|v| v.trim().to_owned());
    let number = |k: &str| -> Result<Option<f64>, ServiceError> {
        opt(k)
            .map(|v| {
                v.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| bad(format!("{k} {v:?} is not a number")))
            })
            .transpose()
    };
    let integer = |k: &str| -> Result<Option<u64>, ServiceError> {
        opt(k)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| bad(format!("{k} {v:?} is not a whole number")))
            })
            .transpose()
    };
    let network = match opt("network").as_deref() {
        None | Some("false" | "off" | "0" | "none" | "no") => false,
        Some("true" | "on" | "1" | "host" | "yes") => true,
        Some(other) => return Err(bad(format!("network {other:?} is not true or false"))),
    };
    let format = match opt("format").as_deref() {
        None | Some("off") => FormatMode::Off,
        Some("check") => FormatMode::Check,
        Some("apply") => FormatMode::Apply,
        Some(other) => return Err(bad(format!("format {other:?} is not off, check or apply"))),
    };
    let lint = match opt("lint").as_deref() {
        None | Some("off") => LintMode::Off,
        Some("warn") => LintMode::Warn,
        Some("error") => LintMode::Error,
        Some(other) => return Err(bad(format!("lint {other:?} is not off, warn or error"))),
    };
    let backend = match opt("backend").as_deref() {
        None => None,
        Some("native") => Some(BackendKind::Native),
        Some("docker") => Some(BackendKind::Docker),
        Some(other) => return Err(bad(format!("backend {other:?} is not native or docker"))),
    };
    let memory = opt("memory")
        .map(|m| parse_size(&m).map_err(|e| bad(format!("memory: {e}"))))
        .transpose()?;
    Ok(Job {
        program: Program::Python { code },
        requirements,
        files: parts.files,
        stdin: parts.stdin,
        limits: RequestedLimits {
            timeout: number("timeout")?,
            memory,
            pids: integer("pids")?,
            cpus: number("cpus")?,
        },
        network,
        format,
        lint,
        backend,
    })
}

/// Parse `multipart/form-data; boundary=...`'s boundary.
pub fn multipart_boundary(content_type: &str) -> Result<String, ServiceError> {
    multer::parse_boundary(content_type).map_err(|e| {
        bad(format!(
            "multipart content type without a usable boundary: {e}"
        ))
    })
}

/// Parse a whole multipart body held in memory (corpus replay, fuzzing).
pub fn job_from_multipart_bytes(
    body: &[u8],
    boundary: &str,
    limit: u64,
) -> Result<Job, ServiceError> {
    let chunks: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(4096)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let stream = futures_util::stream::iter(chunks);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    rt.block_on(job_from_multipart(stream, boundary, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (name, file, data) in parts {
            body.extend_from_slice(b"--XyZ\r\n");
            match file {
                Some(f) => body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\r\n"
                    )
                    .as_bytes(),
                ),
                None => body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                ),
            }
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--XyZ--\r\n");
        body
    }

    #[test]
    fn json_bodies_become_jobs() {
        let job = job_from_json(
            br#"{"code":"print(1)","requirements":"numpy\n","stdin":"in",
                "files":{"a.txt":{"text":"hi"},"b.bin":{"base64":"AP8="}},
                "timeout":2.5,"memory":"64M","pids":8,"cpus":0.5,"network":false,
                "format":"apply","lint":"error"}"#,
        )
        .unwrap();
        assert_eq!(
            job.program,
            Program::Python {
                code: "print(1)".into()
            }
        );
        assert_eq!(job.requirements.as_deref(), Some("numpy\n"));
        assert_eq!(job.stdin.as_deref(), Some(&b"in"[..]));
        assert_eq!(
            job.files[0],
            JobFile {
                name: "a.txt".into(),
                content: b"hi".to_vec()
            }
        );
        assert_eq!(job.files[1].content, vec![0, 255]);
        assert_eq!(job.limits.timeout, Some(2.5));
        assert_eq!(job.limits.memory, Some(64 << 20));
        assert_eq!(job.limits.pids, Some(8));
        assert_eq!((job.format, job.lint), (FormatMode::Apply, LintMode::Error));
        let j = job_from_json(br#"{"code":"x","memory":1048576}"#).unwrap();
        assert_eq!(j.limits.memory, Some(1 << 20));
        assert_eq!(j.backend, None, "the server's default");
        let j = job_from_json(br#"{"code":"x","backend":"docker"}"#).unwrap();
        assert_eq!(j.backend, Some(BackendKind::Docker));
    }

    #[test]
    fn bad_json_bodies_are_400_with_the_reason() {
        for (body, needle) in [
            (&b"{"[..], "invalid JSON"),
            (b"[]", "invalid JSON"),
            (br#"{"requirements":"x"}"#, "missing field `code`"),
            (br#"{"code":"x","colour":1}"#, "unknown field `colour`"),
            (br#"{"code":"x","files":{"a":{}}}"#, "exactly one"),
            (
                br#"{"code":"x","files":{"a":{"text":"1","base64":"AA=="}}}"#,
                "exactly one",
            ),
            (
                br#"{"code":"x","files":{"a":{"base64":"!!"}}}"#,
                "files.a.base64",
            ),
            (br#"{"code":"x","memory":"lots"}"#, "memory"),
            (br#"{"code":"x","lint":"loud"}"#, "unknown variant"),
            (br#"{"code":"x","timeout":"soon"}"#, "invalid JSON"),
            (br#"{"code":"x","backend":"vm"}"#, "unknown variant"),
        ] {
            let e = job_from_json(body).unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequest);
            assert!(e.message.contains(needle), "{needle}: {}", e.message);
        }
    }

    #[test]
    fn multipart_bodies_become_jobs() {
        let body = form(&[
            ("main.py", Some("main.py"), b"print(input())"),
            ("requirements.txt", Some("requirements.txt"), b"rich\n"),
            ("data.csv", Some("data.csv"), b"a,b\n"),
            ("files", Some("other.bin"), b"\x00\x01"),
            ("stdin", None, b"hello"),
            ("timeout", None, b"3"),
            ("memory", None, b"128M"),
            ("network", None, b"false"),
            ("lint", None, b"warn"),
            ("backend", None, b"native"),
        ]);
        let job = job_from_multipart_bytes(&body, "XyZ", 1 << 20).unwrap();
        assert_eq!(job.backend, Some(BackendKind::Native));
        assert_eq!(
            job.program,
            Program::Python {
                code: "print(input())".into()
            }
        );
        assert_eq!(job.requirements.as_deref(), Some("rich\n"));
        assert_eq!(job.stdin.as_deref(), Some(&b"hello"[..]));
        let names: Vec<&str> = job.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["data.csv", "other.bin"]);
        assert_eq!(job.limits.timeout, Some(3.0));
        assert_eq!(job.limits.memory, Some(128 << 20));
        assert_eq!(job.lint, LintMode::Warn);
    }

    #[test]
    fn bad_multipart_bodies_are_400_or_413() {
        let e = |body: Vec<u8>| job_from_multipart_bytes(&body, "XyZ", 4096).unwrap_err();
        let no_main = e(form(&[("timeout", None, b"1")]));
        assert!(
            no_main.message.contains("no main.py"),
            "{}",
            no_main.message
        );
        let twice = e(form(&[("main.py", None, b"1"), ("main.py", None, b"2")]));
        assert!(twice.message.contains("twice"));
        let unknown = e(form(&[("main.py", None, b"1"), ("colour", None, b"red")]));
        assert!(unknown.message.contains("unknown form field"));
        let nan = e(form(&[("main.py", None, b"1"), ("timeout", None, b"NaN")]));
        assert!(nan.message.contains("not a number"));
        let net = e(form(&[
            ("main.py", None, b"1"),
            ("network", None, b"maybe"),
        ]));
        assert!(net.message.contains("network"));
        let fmt = e(form(&[
            ("main.py", None, b"1"),
            ("format", None, b"pretty"),
        ]));
        assert!(fmt.message.contains("format"));
        let backend = e(form(&[
            ("main.py", None, b"1"),
            ("backend", None, b"podman"),
        ]));
        assert!(
            backend.message.contains("native or docker"),
            "{}",
            backend.message
        );
        let binary = e(form(&[("main.py", None, b"\xff\xfe")]));
        assert!(binary.message.contains("UTF-8"));
        let garbage = e(b"not a multipart body at all".to_vec());
        assert_eq!(garbage.kind, ErrorKind::BadRequest);
        let big = e(form(&[("main.py", None, &[b'#'; 8192])]));
        assert_eq!(big.kind, ErrorKind::PayloadTooLarge, "{}", big.message);
    }

    #[test]
    fn boundaries_come_from_the_content_type() {
        assert_eq!(
            multipart_boundary("multipart/form-data; boundary=XyZ").unwrap(),
            "XyZ"
        );
        assert!(multipart_boundary("multipart/form-data").is_err());
    }
}
