//! Host toolchain bootstrap: pinned uv and ruff wheels from PyPI, verified by sha256,
//! unpacked atomically into `<data>/toolchain/host-uv<V>-ruff<V>-<arch>/bin/`.
//!
//! The wheels are plain zip files that carry a static binary under
//! `<name>-<version>.data/scripts/<name>`; nothing of them is executed before the hash
//! matched. The work happens in a staging directory next to the final one, under a file
//! lock, and the final directory appears with one `rename`: a killed bootstrap leaves a
//! staging directory that the next bootstrap removes, never a half-made toolchain.

use std::fs::File;
use std::io::{Read, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::FlockArg;
use sha2::{Digest as _, Sha256};

use super::fsutil;
use super::progress::Progress;

/// A wheel kakoi downloads, pinned by URL path, size and sha256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedWheel {
    /// Distribution name (`uv`, `ruff`).
    pub name: &'static str,
    /// Version.
    pub version: &'static str,
    /// `std::env::consts::ARCH` this wheel is for.
    pub arch: &'static str,
    /// Path below the files host (`packages/...`).
    pub path: &'static str,
    /// Size in bytes.
    pub size: u64,
    /// sha256 of the wheel, hex.
    pub sha256: &'static str,
}

impl PinnedWheel {
    /// The member of the wheel that is the binary.
    pub fn member(&self) -> String {
        format!("{0}-{1}.data/scripts/{0}", self.name, self.version)
    }
}

/// uv version kakoi pins.
pub const PINNED_UV: &str = "0.13.9";
/// ruff version kakoi pins.
pub const PINNED_RUFF: &str = "0.17.6";

/// The pinned wheels, from PyPI's JSON API (`/pypi/<name>/<version>/json`).
pub const WHEELS: &[PinnedWheel] = &[
    PinnedWheel {
        name: "uv",
        version: PINNED_UV,
        arch: "x86_64",
        path: "packages/3d/aa/26d64642d808de4a652579ef950d7cd2d37f080a8babf9c67c6b75fc4c3f/uv-0.13.9-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        size: 17_606_939,
        sha256: "d7f459fe4fd247d830351c75686d3996ace3c6f3f728eb0e85a30b7ada0cef19",
    },
    PinnedWheel {
        name: "uv",
        version: PINNED_UV,
        arch: "aarch64",
        path: "packages/fe/2f/51a5de367c602592c018a42a23d57fba5f2689fe6c3bf025dcf043b39c61/uv-0.13.9-py3-none-manylinux_2_28_aarch64.whl",
        size: 16_864_124,
        sha256: "ecb6028d79dc96fbeafffe5c8af62a7099487ebc05a701e76714eebcffd06375",
    },
    PinnedWheel {
        name: "ruff",
        version: PINNED_RUFF,
        arch: "x86_64",
        path: "packages/be/48/3df7d81249fd69ee6a49519b149fb5d11e13118fd7d0e8d65329a237087b/ruff-0.17.6-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        size: 10_645_279,
        sha256: "aa3b08254a732acba246891089a152c47c5733dc36b8ecb76ce8602f8326e5e4",
    },
    PinnedWheel {
        name: "ruff",
        version: PINNED_RUFF,
        arch: "aarch64",
        path: "packages/eb/11/f3032684dcb3a676d7924545153d76fb56f76753e038f2ea650b99c71bdf/ruff-0.17.6-py3-none-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
        size: 10_271_368,
        sha256: "435241c61af5909a022f76219d3d1bf24730dc1bf0acabb5ddf4b569ab3cbb30",
    },
];

/// Where the wheels are fetched from (overridable with `KAKOI_PYPI_FILES_URL` for a mirror;
/// the pinned hashes are checked either way).
pub const DEFAULT_FILES_URL: &str = "https://files.pythonhosted.org";
/// Environment variable naming a PyPI files mirror.
pub const FILES_URL_ENV: &str = "KAKOI_PYPI_FILES_URL";

/// Why the host toolchain could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// No pinned wheel exists for this CPU.
    #[error("no pinned {name} wheel for {arch}; install Nix or put {name} on a supported CPU")]
    Unsupported {
        /// Tool.
        name: &'static str,
        /// CPU architecture.
        arch: &'static str,
    },
    /// The download failed.
    #[error("cannot download {url}")]
    Download {
        /// The URL.
        url: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The wheel does not match its pin.
    #[error("{url} does not match its pin: expected {expected}, got {actual}")]
    Mismatch {
        /// The URL.
        url: String,
        /// Pinned value (sha256 or size).
        expected: String,
        /// What arrived.
        actual: String,
    },
    /// The wheel is not a zip with the expected member.
    #[error("cannot unpack {member} from {wheel}")]
    Unpack {
        /// The wheel file.
        wheel: PathBuf,
        /// The member.
        member: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A filesystem operation failed.
    #[error("cannot {action} {path}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The store's locking failed.
    #[error("cannot lock the toolchain directory")]
    Lock(#[source] Box<super::EnvError>),
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BootstrapError {
    let path = path.to_path_buf();
    move |source| BootstrapError::Io {
        action,
        path,
        source,
    }
}

/// The bootstrapped tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTools {
    /// The directory holding `bin/uv` and `bin/ruff` (bound read-only into build sandboxes).
    pub dir: PathBuf,
    /// `bin/uv`.
    pub uv: PathBuf,
    /// `bin/ruff`.
    pub ruff: PathBuf,
}

/// Name of the directory for this CPU and these pins.
pub fn tools_dir_name(arch: &str) -> String {
    format!("host-uv{PINNED_UV}-ruff{PINNED_RUFF}-{arch}")
}

fn pinned(name: &'static str, arch: &'static str) -> Result<&'static PinnedWheel, BootstrapError> {
    WHEELS
        .iter()
        .find(|w| w.name == name && w.arch == arch)
        .ok_or(BootstrapError::Unsupported { name, arch })
}

/// The tools if they are already installed (two `stat`s; never downloads).
pub fn installed(toolchain_dir: &Path) -> Option<HostTools> {
    let dir = toolchain_dir.join(tools_dir_name(std::env::consts::ARCH));
    let tools = HostTools {
        uv: dir.join("bin/uv"),
        ruff: dir.join("bin/ruff"),
        dir,
    };
    (tools.uv.is_file() && tools.ruff.is_file()).then_some(tools)
}

/// Install the pinned uv and ruff into `toolchain_dir` unless they are there.
pub fn ensure(
    toolchain_dir: &Path,
    progress: &mut dyn Progress,
) -> Result<HostTools, BootstrapError> {
    if let Some(tools) = installed(toolchain_dir) {
        return Ok(tools);
    }
    let arch = std::env::consts::ARCH;
    let uv = pinned("uv", arch)?;
    let ruff = pinned("ruff", arch)?;
    fsutil::create_dir(toolchain_dir, super::datadir::TRAVERSE_MODE)
        .map_err(|e| BootstrapError::Lock(Box::new(e)))?;
    let _lock = fsutil::lock(
        &toolchain_dir.join(".bootstrap.lock"),
        FlockArg::LockExclusive,
    )
    .map_err(|e| BootstrapError::Lock(Box::new(e)))?;
    if let Some(tools) = installed(toolchain_dir) {
        return Ok(tools); // another process finished it while we waited
    }
    sweep_staging(toolchain_dir);
    let final_dir = toolchain_dir.join(tools_dir_name(arch));
    let staging = toolchain_dir.join(format!(".staging-{}", fsutil::unique_suffix()));
    progress.message(&format!(
        "first use: installing the toolchain (uv {PINNED_UV}, ruff {PINNED_RUFF}, {:.1} MB from PyPI) into {}",
        (uv.size + ruff.size) as f64 / 1e6,
        final_dir.display()
    ));
    let result = (|| {
        std::fs::create_dir(&staging).map_err(io("create", &staging))?;
        std::fs::create_dir(staging.join("bin")).map_err(io("create", &staging))?;
        let base = std::env::var(FILES_URL_ENV).unwrap_or_else(|_| DEFAULT_FILES_URL.into());
        for wheel in [uv, ruff] {
            let file = staging.join(format!("{}.whl", wheel.name));
            download(&base, wheel, &file, progress)?;
            unpack(
                &file,
                &wheel.member(),
                &staging.join("bin").join(wheel.name),
            )?;
            std::fs::remove_file(&file).map_err(io("remove", &file))?;
        }
        let manifest = serde_json::json!({
            "uv": { "version": uv.version, "sha256": uv.sha256, "path": uv.path },
            "ruff": { "version": ruff.version, "sha256": ruff.sha256, "path": ruff.path },
        });
        std::fs::write(staging.join("manifest.json"), manifest.to_string())
            .map_err(io("write", &staging))?;
        std::fs::rename(&staging, &final_dir).map_err(io("rename", &staging))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result?;
    installed(toolchain_dir).ok_or_else(|| BootstrapError::Io {
        action: "find the installed tools in",
        path: final_dir,
        source: std::io::ErrorKind::NotFound.into(),
    })
}

/// Remove staging directories of bootstraps that died (we hold the bootstrap lock).
fn sweep_staging(toolchain_dir: &Path) {
    let Ok(dir) = std::fs::read_dir(toolchain_dir) else {
        return;
    };
    for entry in dir.flatten() {
        if entry.file_name().to_string_lossy().starts_with(".staging-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Download one wheel to `dest`, hashing as it streams; verify size and sha256.
fn download(
    base: &str,
    wheel: &PinnedWheel,
    dest: &Path,
    progress: &mut dyn Progress,
) -> Result<(), BootstrapError> {
    let url = format!("{}/{}", base.trim_end_matches('/'), wheel.path);
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| BootstrapError::Download {
        url: url.clone(),
        source,
    };
    // No global or resolve timeout: with one, ureq resolves names on a helper thread, and
    // the launcher must stay single-threaded for the sandbox runs that follow.
    let config = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                .build(),
        )
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_recv_body(Some(Duration::from_secs(900)))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let mut response = agent.get(&url).call().map_err(|e| failed(e.into()))?;
    let mut reader = response
        .body_mut()
        .with_config()
        .limit(wheel.size + 1)
        .reader();
    let mut file = File::create(dest).map_err(io("create", dest))?;
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    let mut chunk = vec![0u8; 256 * 1024];
    let label = format!("{} {}", wheel.name, wheel.version);
    progress.download(&label, 0, wheel.size);
    loop {
        let n = reader.read(&mut chunk).map_err(|e| failed(e.into()))?;
        if n == 0 {
            break;
        }
        hasher.update(&chunk[..n]);
        file.write_all(&chunk[..n]).map_err(io("write", dest))?;
        done += n as u64;
        progress.download(&label, done, wheel.size);
    }
    file.sync_all().map_err(io("write", dest))?;
    if done != wheel.size {
        return Err(BootstrapError::Mismatch {
            url,
            expected: format!("{} bytes", wheel.size),
            actual: format!("{done} bytes"),
        });
    }
    let actual = hex::encode(hasher.finalize());
    if actual != wheel.sha256 {
        return Err(BootstrapError::Mismatch {
            url,
            expected: format!("sha256 {}", wheel.sha256),
            actual: format!("sha256 {actual}"),
        });
    }
    Ok(())
}

/// Extract one member of a wheel as an executable file.
fn unpack(wheel: &Path, member: &str, dest: &Path) -> Result<(), BootstrapError> {
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| BootstrapError::Unpack {
        wheel: wheel.into(),
        member: member.into(),
        source,
    };
    let file = File::open(wheel).map_err(io("open", wheel))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| failed(e.into()))?;
    let mut entry = archive.by_name(member).map_err(|e| failed(e.into()))?;
    let mut out = File::create(dest).map_err(io("create", dest))?;
    std::io::copy(&mut entry, &mut out).map_err(|e| failed(e.into()))?;
    out.sync_all().map_err(io("write", dest))?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755))
        .map_err(io("chmod", dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_arch_has_both_tools() {
        for arch in ["x86_64", "aarch64"] {
            for name in ["uv", "ruff"] {
                let w = pinned(name, arch).unwrap();
                assert_eq!(w.sha256.len(), 64);
                assert!(w.path.contains(&format!("{name}-{}-", w.version)));
                assert!(w.path.ends_with(".whl"));
            }
        }
        assert!(matches!(
            pinned("uv", "riscv64"),
            Err(BootstrapError::Unsupported { .. })
        ));
        assert_eq!(
            pinned("uv", "x86_64").unwrap().member(),
            "uv-0.13.9.data/scripts/uv"
        );
    }

    #[test]
    fn unpack_refuses_a_wheel_without_the_member() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("w.whl");
        let mut zip = zip::ZipWriter::new(File::create(&wheel).unwrap());
        zip.start_file("other", zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(b"x").unwrap();
        zip.finish().unwrap();
        let err = unpack(&wheel, "uv-0.13.9.data/scripts/uv", &dir.path().join("uv")).unwrap_err();
        assert!(matches!(err, BootstrapError::Unpack { .. }), "{err}");
    }
}
