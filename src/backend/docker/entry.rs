//! The protocol between the Docker backend and `kakoi-entry`, the worker image's entrypoint
//! (`docker/worker/kakoi-entry`).
//!
//! Why an entrypoint at all: the container's root is read-only and `/work` is a tmpfs that
//! exists only in the container's mount namespace. An archive uploaded through the Engine API
//! before start is written beneath the (not yet mounted) tmpfs and hidden by it; after start
//! the daemon's view of the container is the read-only layer, not the tmpfs. So the input
//! files travel over the attached stdin instead, and the entry unpacks them into `/work`
//! before it execs the payload:
//!
//! ```text
//! stdin:  "<N>[ collect <nonce> <maxdepth> <dir>]\n" | N bytes: tar of the input files
//!         | the payload's stdin ... EOF
//! stdout: "kakoi-entry 2 ok\n" | the payload's stdout ...
//!     or: "kakoi-entry 2 error <stage> <ERRNO> <detail>\n"   (exit 125, nothing ran)
//! ```
//!
//! The status line is written before the payload exists, on the pipe the payload inherits,
//! so it is always the first line of stdout and the payload cannot forge or interleave it.
//! Its arrival is also the moment the payload starts (`setup_ms` / `wall_ms` split).
//!
//! With `collect`, the entry is the container's pid 1 and, after the payload, prints an end
//! marker and a listing of the output directory (see [`super::collect`] and the script).

use std::io::Read as _;
use std::path::Path;

use crate::spec::{InputFile, Source};

/// Where the entry script lives in a worker image.
pub const ENTRY_PATH: &str = "/usr/local/lib/kakoi/kakoi-entry";
/// Protocol version: the value of the image label [`super::LABEL_WORKER`].
pub const PROTOCOL: &str = "2";
/// The entry script (embedded into the worker image by `kakoi docker build-image`).
pub const ENTRY_SCRIPT: &[u8] = include_bytes!("../../../docker/worker/kakoi-entry");
/// The worker image's Dockerfile.
pub const DOCKERFILE: &[u8] = include_bytes!("../../../docker/worker/Dockerfile");

/// Digest of the worker recipe (Dockerfile and entry script), 16 hex digits: the value of
/// the image label [`super::LABEL_RECIPE`], so an image built from another kakoi's recipe
/// is detected instead of half-working.
pub fn recipe_digest() -> String {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    h.update(DOCKERFILE);
    h.update(b"\0");
    h.update(ENTRY_SCRIPT);
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Longest status line accepted; anything longer is a protocol error.
const MAX_STATUS_LINE: usize = 4096;

/// What the entry reported before the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryStatus {
    /// The payload is exec'd next.
    Ok,
    /// Setup failed; nothing of the payload ran.
    Error {
        /// `files`, `exec` or `protocol`.
        stage: String,
        /// Symbolic errno, e.g. `ENOENT`.
        errno: String,
        /// What the step was working on.
        detail: String,
    },
}

/// Splits the status line off the front of the stdout stream.
#[derive(Debug, Default)]
pub struct StatusLine {
    buffer: Vec<u8>,
    status: Option<EntryStatus>,
    overflow: bool,
}

impl StatusLine {
    /// The parsed status, once the whole line arrived.
    pub fn status(&self) -> Option<&EntryStatus> {
        self.status.as_ref()
    }

    /// The line was longer than any valid one (not an entry we know).
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// Feed stdout bytes; returns the part that belongs to the payload.
    pub fn feed<'a>(&mut self, bytes: &'a [u8]) -> PayloadBytes<'a> {
        if self.status.is_some() || self.overflow {
            return PayloadBytes::Borrowed(bytes);
        }
        match bytes.iter().position(|&b| b == b'\n') {
            Some(end) => {
                self.buffer.extend_from_slice(&bytes[..end]);
                self.status = Some(parse_status(&self.buffer));
                PayloadBytes::Borrowed(&bytes[end + 1..])
            }
            None => {
                self.buffer.extend_from_slice(bytes);
                if self.buffer.len() > MAX_STATUS_LINE {
                    self.overflow = true;
                    // Not our entry: hand everything to the payload's stream.
                    return PayloadBytes::Owned(std::mem::take(&mut self.buffer));
                }
                PayloadBytes::Borrowed(&[])
            }
        }
    }

    /// Bytes held back while waiting for a newline that never came (the stream ended).
    pub fn take_partial(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buffer)
    }
}

/// Payload bytes split off a stdout frame.
#[derive(Debug)]
pub enum PayloadBytes<'a> {
    /// A slice of the frame.
    Borrowed(&'a [u8]),
    /// Bytes that were buffered.
    Owned(Vec<u8>),
}

impl PayloadBytes<'_> {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            PayloadBytes::Borrowed(b) => b,
            PayloadBytes::Owned(v) => v,
        }
    }
}

fn parse_status(line: &[u8]) -> EntryStatus {
    let line = String::from_utf8_lossy(line);
    let mut words = line.splitn(6, ' ');
    let protocol_error = |detail: &str| EntryStatus::Error {
        stage: "protocol".into(),
        errno: "EPROTO".into(),
        detail: detail.chars().take(200).collect(),
    };
    if words.next() != Some("kakoi-entry") || words.next() != Some(PROTOCOL) {
        return protocol_error(&line);
    }
    match words.next() {
        Some("ok") => EntryStatus::Ok,
        Some("error") => EntryStatus::Error {
            stage: words.next().unwrap_or("unknown").to_owned(),
            errno: words.next().unwrap_or("EIO").to_owned(),
            detail: words.next().unwrap_or("").to_owned(),
        },
        _ => protocol_error(&line),
    }
}

/// Numeric value of the errno names the entry reports.
pub fn errno_value(name: &str) -> i32 {
    match name {
        "ENOENT" => libc::ENOENT,
        "EACCES" => libc::EACCES,
        "ENOSPC" => libc::ENOSPC,
        "EINVAL" => libc::EINVAL,
        "EPROTO" => libc::EPROTO,
        _ => libc::EIO,
    }
}

/// Error building the input archive.
#[derive(Debug, thiserror::Error)]
#[error("cannot read input file {path}")]
pub struct InputError {
    /// The host path (or `<bytes>` for in-memory content).
    pub path: String,
    /// Cause.
    #[source]
    pub source: std::io::Error,
}

/// Collect mode of a run, as the entry's header carries it.
#[derive(Debug, Clone)]
pub struct CollectHeader<'a> {
    /// Per-run nonce of the end marker (lowercase hex).
    pub nonce: &'a str,
    /// `find -maxdepth` of the listing: one level below the deepest directory entered.
    pub max_depth: usize,
    /// The output directory, relative to `/work` (UTF-8, no newline: checked by the caller).
    pub dir: &'a str,
}

/// The stdin prefix for the entry: the header line (`"<N>"`, plus the collect fields) and a
/// tar of `files` (mode 0644 like the native sandbox's copies, parent directories 0755).
/// Destinations are already validated relative paths without `..`.
pub fn input_stream_prefix(
    files: &[InputFile],
    collect: Option<&CollectHeader<'_>>,
) -> Result<Vec<u8>, InputError> {
    let mut archive = Vec::new();
    if !files.is_empty() {
        let mut builder = tar::Builder::new(&mut archive);
        let mut dirs: Vec<&Path> = Vec::new();
        for file in files {
            for ancestor in file.dest.ancestors().skip(1) {
                if ancestor.as_os_str().is_empty() || dirs.contains(&ancestor) {
                    continue;
                }
                dirs.push(ancestor);
            }
        }
        // Parents before children.
        dirs.sort_by_key(|d| d.components().count());
        let io = |path: &str| {
            let path = path.to_owned();
            move |source| InputError { path, source }
        };
        for dir in dirs {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            header.set_mtime(0);
            builder
                .append_data(&mut header, dir, std::io::empty())
                .map_err(io(&dir.display().to_string()))?;
        }
        for file in files {
            let (content, name) = match &file.source {
                Source::Bytes(bytes) => (bytes.clone(), "<bytes>".to_owned()),
                Source::Path(path) => {
                    let name = path.display().to_string();
                    let mut handle = std::fs::File::open(path).map_err(io(&name))?;
                    if !handle.metadata().map_err(io(&name))?.is_file() {
                        return Err(InputError {
                            path: name,
                            source: std::io::Error::other("not a regular file"),
                        });
                    }
                    let mut content = Vec::new();
                    handle.read_to_end(&mut content).map_err(io(&name))?;
                    (content, name)
                }
            };
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(content.len() as u64);
            header.set_mtime(0);
            builder
                .append_data(&mut header, &file.dest, content.as_slice())
                .map_err(io(&name))?;
        }
        builder.finish().map_err(io("<archive>"))?;
        drop(builder);
    }
    let mut prefix = match collect {
        None => format!("{}\n", archive.len()),
        Some(c) => format!(
            "{} collect {} {} {}\n",
            archive.len(),
            c.nonce,
            c.max_depth,
            c.dir
        ),
    }
    .into_bytes();
    prefix.extend_from_slice(&archive);
    Ok(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_tag_carries_this_recipe() {
        assert_eq!(env!("KAKOI_WORKER_RECIPE"), recipe_digest());
        assert!(super::super::DEFAULT_IMAGE.ends_with(&format!("-{}", recipe_digest())));
    }

    #[test]
    fn status_line_is_split_off_across_frames() {
        let mut s = StatusLine::default();
        assert!(s.feed(b"kakoi-en").as_slice().is_empty());
        assert_eq!(s.status(), None);
        assert_eq!(s.feed(b"try 2 ok\nhello").as_slice(), b"hello");
        assert_eq!(s.status(), Some(&EntryStatus::Ok));
        assert_eq!(
            s.feed(b"kakoi-entry 2 ok\n").as_slice(),
            b"kakoi-entry 2 ok\n"
        );
    }

    #[test]
    fn errors_and_garbage_are_reported() {
        let mut s = StatusLine::default();
        s.feed(b"kakoi-entry 2 error exec ENOENT /work/missing file\n");
        assert_eq!(
            s.status(),
            Some(&EntryStatus::Error {
                stage: "exec".into(),
                errno: "ENOENT".into(),
                detail: "/work/missing file".into()
            })
        );
        let mut s = StatusLine::default();
        s.feed(b"hello\n");
        assert!(
            matches!(s.status(), Some(EntryStatus::Error { stage, .. }) if stage == "protocol")
        );
        let mut s = StatusLine::default();
        let long = vec![b'x'; MAX_STATUS_LINE + 1];
        assert_eq!(s.feed(&long).as_slice().len(), MAX_STATUS_LINE + 1);
        assert!(s.overflowed());
    }

    #[test]
    fn input_prefix_holds_a_tar_of_the_files() {
        let files = vec![
            InputFile {
                source: Source::Bytes(b"print(1)\n".to_vec()),
                dest: "main.py".into(),
            },
            InputFile {
                source: Source::Bytes(b"a,b\n".to_vec()),
                dest: "data/sub/x.csv".into(),
            },
        ];
        let prefix = input_stream_prefix(&files, None).unwrap();
        let newline = prefix.iter().position(|&b| b == b'\n').unwrap();
        let size: usize = std::str::from_utf8(&prefix[..newline])
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(size, prefix.len() - newline - 1);
        let mut archive = tar::Archive::new(&prefix[newline + 1..]);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let mut body = String::new();
            entry.read_to_string(&mut body).unwrap();
            seen.push((path, entry.header().mode().unwrap(), body));
        }
        assert_eq!(
            seen,
            vec![
                ("data".into(), 0o755, String::new()),
                ("data/sub".into(), 0o755, String::new()),
                ("main.py".into(), 0o644, "print(1)\n".into()),
                ("data/sub/x.csv".into(), 0o644, "a,b\n".into()),
            ]
        );
        assert_eq!(input_stream_prefix(&[], None).unwrap(), b"0\n");
        let header = CollectHeader {
            nonce: "00ff",
            max_depth: 17,
            dir: "out dir/x",
        };
        assert_eq!(
            input_stream_prefix(&[], Some(&header)).unwrap(),
            b"0 collect 00ff 17 out dir/x\n"
        );
    }
}
