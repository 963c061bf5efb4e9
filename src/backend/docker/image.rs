//! Building the worker image locally (`kakoi docker build-image`): no registry is needed.
//!
//! ```text
//!  base                                   worker (docker/worker/Dockerfile)
//!  ────                                   ──────
//!  debootstrap --variant=minbase ─▶ tar   FROM <base>
//!    (cached: <cache>/rootfs-<suite>-<key>.tar,   + kakoi-entry, user/group 1000 "sandbox",
//!     key = hash of suite, mirror, packages)      checks sh, head, tar, find, ..., python3.11
//!  docker import ─▶ kakoi-base:<suite>-<key>      label kakoi.worker=<protocol>
//!  or --rootfs-tar FILE ─▶ kakoi-base:tar-<hash>  ─▶ kakoi-worker:<version>
//!  or --base-image NAME (already local)
//! ```
//!
//! The default base is Debian bookworm with `python3`, i.e. python3.11: the same Python as a
//! bookworm host, so environments built on the host run unchanged when bound into a
//! container at the same absolute path.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bollard::Docker;
use bollard::errors::Error as ApiError;
use bollard::query_parameters::{BuildImageOptions, BuilderVersion, CreateImageOptions};
use futures_util::StreamExt as _;
use sha2::{Digest as _, Sha256};

use super::{LABEL_RECIPE, LABEL_WORKER, entry};

/// Debian suite of the default base.
pub const SUITE: &str = "bookworm";
/// apt mirror of the default base.
pub const MIRROR: &str = "http://deb.debian.org/debian";
/// Packages added to the minbase variant: `python3` is python3.11 on bookworm (the probes
/// and `kakoi run` need nothing else; sh, head and tar are in minbase).
pub const PACKAGES: &[&str] = &["python3"];
/// Changes whenever the recipe below changes, so old cached tarballs are not reused.
const RECIPE: &str = "kakoi-rootfs v1 variant=minbase clean=apt-archives,apt-lists";

/// Errors of the image build.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// debootstrap needs root.
    #[error("building the base rootfs with debootstrap needs root")]
    NotRoot,
    /// A host tool is missing.
    #[error("{tool} is not installed")]
    MissingTool {
        /// The program.
        tool: &'static str,
    },
    /// debootstrap failed.
    #[error("debootstrap failed ({status}); its log is {log}:\n{tail}")]
    Debootstrap {
        /// Exit status.
        status: String,
        /// Where the full log was kept.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// A host command failed.
    #[error("{command} failed: {status}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status or spawn error.
        status: String,
    },
    /// A file operation failed.
    #[error("cannot {what} {path}")]
    Io {
        /// What.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Something is still mounted in the build directory; it is left in place.
    #[error("{path} is still mounted after debootstrap; the build directory was left in place")]
    StillMounted {
        /// The mount point.
        path: PathBuf,
    },
    /// The named base image is not in the engine.
    #[error("base image {image} is not in the Docker engine (kakoi never pulls)")]
    BaseMissing {
        /// The image.
        image: String,
    },
    /// An Engine API call failed.
    #[error("docker engine: cannot {what}")]
    Api {
        /// What.
        what: String,
        /// Cause.
        #[source]
        source: ApiError,
    },
    /// The build reported an error.
    #[error("building {tag} failed: {message}")]
    Build {
        /// The tag being built.
        tag: String,
        /// The builder's message.
        message: String,
    },
}

impl ImageError {
    /// A remedy, where one is known.
    pub fn hint(&self) -> Option<String> {
        match self {
            ImageError::NotRoot => Some(
                "run it as root, or build elsewhere and pass --rootfs-tar FILE or --base-image NAME".into(),
            ),
            ImageError::MissingTool { tool } => Some(format!("apt-get install {tool}")),
            ImageError::BaseMissing { .. } => Some(
                "load it first (docker load / docker import), or leave --base-image out to build the Debian base locally".into(),
            ),
            ImageError::Build { message, .. } if message.contains("lacks") => Some(
                "the base image needs sh, head, tar, find, chmod, sleep and python3.11".into(),
            ),
            _ => None,
        }
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.to_owned();
    move |source| ImageError::Io { what, path, source }
}

fn api(what: impl Into<String>) -> impl FnOnce(ApiError) -> ImageError {
    let what = what.into();
    move |source| ImageError::Api { what, source }
}

/// Where rootfs tarballs are cached: `/var/cache/kakoi/docker` as root, else
/// `$XDG_CACHE_HOME/kakoi/docker` or `~/.cache/kakoi/docker`.
pub fn default_cache_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/cache/kakoi/docker");
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("kakoi/docker")
}

/// Cache key of a debootstrap rootfs: 16 hex digits of a hash of everything that shapes it.
pub fn rootfs_key(suite: &str, mirror: &str, packages: &[&str]) -> String {
    let mut h = Sha256::new();
    for part in [RECIPE, suite, mirror].iter().chain(packages) {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
    hex(&h.finalize())[..16].to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A rootfs tarball and whether it came from the cache.
#[derive(Debug, Clone)]
pub struct Rootfs {
    /// The tarball.
    pub path: PathBuf,
    /// Its cache key.
    pub key: String,
    /// It was already cached.
    pub cache_hit: bool,
}

/// Return the cached debootstrap rootfs tarball, building it first when missing. Blocking
/// (minutes when cold). Concurrent callers build it once (a file lock).
pub fn ensure_rootfs(
    cache_dir: &Path,
    suite: &str,
    mirror: &str,
    progress: &dyn Fn(&str),
) -> Result<Rootfs, ImageError> {
    let key = rootfs_key(suite, mirror, PACKAGES);
    let tarball = cache_dir.join(format!("rootfs-{suite}-{key}.tar"));
    if tarball.is_file() {
        return Ok(Rootfs {
            path: tarball,
            key,
            cache_hit: true,
        });
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(ImageError::NotRoot);
    }
    for tool in ["debootstrap", "tar"] {
        if find_program(tool).is_none() {
            return Err(ImageError::MissingTool { tool });
        }
    }
    std::fs::create_dir_all(cache_dir).map_err(io("create", cache_dir))?;
    let lock_path = cache_dir.join(format!("rootfs-{suite}-{key}.lock"));
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io("open", &lock_path))?;
    progress(&format!("waiting for the lock {}", lock_path.display()));
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io("lock", &lock_path)(e.into()))?;
    if tarball.is_file() {
        // Another builder finished while we waited.
        return Ok(Rootfs {
            path: tarball,
            key,
            cache_hit: true,
        });
    }
    let work = cache_dir.join(format!(".build-{key}-{}", std::process::id()));
    if work.exists() {
        remove_build_dir(&work)?;
    }
    std::fs::create_dir_all(&work).map_err(io("create", &work))?;
    let root = work.join("root");
    let log = cache_dir.join(format!("debootstrap-{suite}-{key}.log"));
    progress(&format!(
        "debootstrap --variant=minbase --include={} {suite} (minutes; log: {})",
        PACKAGES.join(","),
        log.display()
    ));
    let log_file = std::fs::File::create(&log).map_err(io("create", &log))?;
    let log_err = log_file.try_clone().map_err(io("open", &log))?;
    let status = Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(suite)
        .arg(&root)
        .arg(mirror)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .status();
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            return Err(ImageError::Command {
                command: "debootstrap".into(),
                status: e.to_string(),
            });
        }
    };
    unmount_below(&root);
    if !status.success() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        let _ = remove_build_dir(&work);
        return Err(ImageError::Debootstrap {
            status: status.to_string(),
            log,
            tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    // Package caches are not needed at run time.
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        clear_files(&root.join(dir));
    }
    progress("packing the rootfs");
    let partial = work.join("rootfs.tar");
    run(Command::new("tar")
        .arg("--numeric-owner")
        .arg("--one-file-system")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&partial)
        .arg("."))?;
    std::fs::rename(&partial, &tarball).map_err(io("rename into place", &tarball))?;
    remove_build_dir(&work)?;
    Ok(Rootfs {
        path: tarball,
        key,
        cache_hit: false,
    })
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn run(command: &mut Command) -> Result<(), ImageError> {
    let line = format!("{command:?}");
    match command.stdin(Stdio::null()).status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(ImageError::Command {
            command: line,
            status: s.to_string(),
        }),
        Err(e) => Err(ImageError::Command {
            command: line,
            status: e.to_string(),
        }),
    }
}

fn clear_files(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Mount points at or below `dir`, deepest first (from /proc/self/mountinfo; `\040`-style
/// escapes decoded).
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && s.is_char_boundary(i + 4)
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// debootstrap mounts /proc (and, in containers, binds /dev) into the target and unmounts
/// them when it finishes; if it died half-way, undo that before anything is removed.
fn unmount_below(dir: &Path) {
    for mount in mounts_below(dir) {
        if let Err(e) = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!("cannot unmount {}: {e}", mount.display());
        }
    }
}

/// Remove a build directory, never across a mount point into the host.
fn remove_build_dir(dir: &Path) -> Result<(), ImageError> {
    unmount_below(dir);
    if let Some(path) = mounts_below(dir).into_iter().next() {
        return Err(ImageError::StillMounted { path });
    }
    std::fs::remove_dir_all(dir).map_err(io("remove", dir))
}

/// sha256 of a file, hex.
fn file_digest(path: &Path) -> Result<String, ImageError> {
    let mut file = std::fs::File::open(path).map_err(io("open", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// The base tag a rootfs tarball is imported as: `kakoi-base:tar-<hash>` for a user's file.
pub fn tarball_base_tag(path: &Path) -> Result<String, ImageError> {
    Ok(format!("kakoi-base:tar-{}", &file_digest(path)?[..16]))
}

/// The base tag of the cached debootstrap rootfs.
pub fn debootstrap_base_tag(rootfs: &Rootfs, suite: &str) -> String {
    format!("kakoi-base:{suite}-{}", rootfs.key)
}

/// Whether an image exists in the engine.
pub async fn image_exists(docker: &Docker, image: &str) -> Result<bool, ImageError> {
    match docker.inspect_image(image).await {
        Ok(_) => Ok(true),
        Err(ApiError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(e) => Err(api(format!("inspect image {image}"))(e)),
    }
}

/// `docker import` a rootfs tarball as `tag` (streamed through the API), unless `tag`
/// exists already. Returns whether it was imported now.
pub async fn import_rootfs(docker: &Docker, tarball: &Path, tag: &str) -> Result<bool, ImageError> {
    if image_exists(docker, tag).await? {
        return Ok(false);
    }
    let (repo, version) = tag.rsplit_once(':').unwrap_or((tag, "latest"));
    let mut file = std::fs::File::open(tarball).map_err(io("open", tarball))?;
    let path = tarball.to_owned();
    // Chunks are read as the request body is sent (blocking reads of a local file).
    let chunks = futures_util::stream::iter(std::iter::from_fn(move || {
        let mut buf = vec![0u8; 1 << 20];
        match file.read(&mut buf) {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some(bytes::Bytes::from(buf))
            }
            Err(e) => {
                tracing::error!("cannot read {}: {e}", path.display());
                None
            }
        }
    }));
    let options = CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(repo.into()),
        tag: Some(version.into()),
        ..Default::default()
    };
    let mut progress = docker.create_image(Some(options), Some(bollard::body_stream(chunks)), None);
    while let Some(item) = progress.next().await {
        item.map_err(api(format!("import {} as {tag}", tarball.display())))?;
    }
    if !image_exists(docker, tag).await? {
        return Err(ImageError::Build {
            tag: tag.into(),
            message: "the import finished but the image does not exist".into(),
        });
    }
    Ok(true)
}

/// The build context: the Dockerfile and the entry script (mode 0755).
fn build_context() -> Vec<u8> {
    let mut context = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut context);
        for (name, body, mode) in [
            ("Dockerfile", entry::DOCKERFILE, 0o644),
            ("kakoi-entry", entry::ENTRY_SCRIPT, 0o755),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(mode);
            header.set_mtime(0);
            builder
                .append_data(&mut header, name, body)
                .expect("writing to a Vec cannot fail");
        }
        builder.finish().expect("writing to a Vec cannot fail");
    }
    context
}

/// Build the worker image `tag` FROM `base` (which must be local). Returns the image id.
pub async fn build_worker(
    docker: &Docker,
    base: &str,
    tag: &str,
    progress: &dyn Fn(&str),
) -> Result<String, ImageError> {
    if !image_exists(docker, base).await? {
        return Err(ImageError::BaseMissing { image: base.into() });
    }
    let previous = docker.inspect_image(tag).await.ok().and_then(|i| i.id);
    let id = build_worker_image(docker, base, tag, progress).await?;
    // The tag moved: drop the image it named before, unless something still uses it.
    if let Some(old) = previous.filter(|old| *old != id) {
        let options = bollard::query_parameters::RemoveImageOptions {
            force: false,
            noprune: false,
        };
        if let Err(e) = docker.remove_image(&old, Some(options), None).await {
            tracing::info!("kept the previous {tag} image {old}: {e}");
        }
    }
    Ok(id)
}

async fn build_worker_image(
    docker: &Docker,
    base: &str,
    tag: &str,
    progress: &dyn Fn(&str),
) -> Result<String, ImageError> {
    let options = BuildImageOptions {
        dockerfile: "Dockerfile".into(),
        t: Some(tag.into()),
        rm: true,
        forcerm: true,
        // RUN steps need no network; the engine may not even have a bridge.
        networkmode: Some("none".into()),
        buildargs: Some(HashMap::from([("BASE".to_string(), base.to_string())])),
        labels: Some(HashMap::from([
            (LABEL_WORKER.to_string(), entry::PROTOCOL.to_string()),
            (LABEL_RECIPE.to_string(), entry::recipe_digest()),
            ("kakoi.base".to_string(), base.to_string()),
            (
                "kakoi.version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            ),
        ])),
        version: BuilderVersion::BuilderV1,
        ..Default::default()
    };
    let mut stream = docker.build_image(
        options,
        None,
        Some(bollard::body_full(build_context().into())),
    );
    let mut image_id = None;
    let mut log = String::new();
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(ApiError::DockerStreamError { error }) => {
                return Err(ImageError::Build {
                    tag: tag.into(),
                    message: format!("{error}\n{log}"),
                });
            }
            Err(e) => return Err(api(format!("build {tag}"))(e)),
        };
        if let Some(text) = info.stream {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                progress(line.trim_end());
                log.push_str(line);
                log.push('\n');
            }
        }
        if let Some(error) = info.error {
            return Err(ImageError::Build {
                tag: tag.into(),
                message: format!("{error}\n{log}"),
            });
        }
        if let Some(id) = info.aux.and_then(|a| a.id) {
            image_id = Some(id);
        }
    }
    match image_id {
        Some(id) => Ok(id),
        None => docker
            .inspect_image(tag)
            .await
            .map_err(api(format!("inspect the new image {tag}")))?
            .id
            .ok_or_else(|| ImageError::Build {
                tag: tag.into(),
                message: "the engine reported no image id".into(),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_key_depends_on_every_input() {
        let k = rootfs_key("bookworm", MIRROR, PACKAGES);
        assert_eq!(k.len(), 16);
        assert_eq!(k, rootfs_key("bookworm", MIRROR, PACKAGES));
        assert_ne!(k, rootfs_key("trixie", MIRROR, PACKAGES));
        assert_ne!(k, rootfs_key("bookworm", "http://other/debian", PACKAGES));
        assert_ne!(k, rootfs_key("bookworm", MIRROR, &["python3", "procps"]));
    }

    #[test]
    fn build_context_holds_the_dockerfile_and_an_executable_entry() {
        let context = build_context();
        let mut archive = tar::Archive::new(context.as_slice());
        let entries: Vec<(String, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            vec![("Dockerfile".into(), 0o644), ("kakoi-entry".into(), 0o755)]
        );
        let dockerfile = String::from_utf8_lossy(entry::DOCKERFILE);
        assert!(dockerfile.contains(entry::ENTRY_PATH));
        assert!(dockerfile.contains("python3.11"));
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
