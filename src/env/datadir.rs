//! Where kakoi keeps its toolchain, uv cache and environments.
//!
//! Root: `/var/lib/kakoi`. Otherwise `$XDG_DATA_HOME/kakoi` or `~/.local/share/kakoi`.
//! `--data-dir` or `KAKOI_DATA_DIR` override both (tests use temp dirs).
//!
//! Environments are bound into sandboxes at their host path, so the data directory must
//! not lie under a path the sandbox builds itself (`/tmp`, `/work`, `/usr`, ...).

use std::path::{Component, Path, PathBuf};

/// Environment variable that overrides the default data directory.
pub const DATA_DIR_ENV: &str = "KAKOI_DATA_DIR";

/// Sandbox paths a bind may not cover (the same list as `RESERVED_TARGETS` in
/// `src/spec.rs`, which validates every bind; repeated here to refuse a data directory
/// before anything is downloaded or built).
const RESERVED: &[&str] = &[
    "/proc", "/dev", "/tmp", "/etc", "/work", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32",
    "/libx32",
];

/// Why a data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// No directory could be derived from the environment.
    #[error("cannot find a data directory: HOME is not set; use --data-dir or KAKOI_DATA_DIR")]
    NoHome,
    /// The path is relative.
    #[error("data directory {path} must be an absolute path")]
    Relative {
        /// The path.
        path: PathBuf,
    },
    /// The directory could not be created or resolved.
    #[error("cannot create the data directory {path}")]
    Create {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The directory cannot be bound into sandboxes at the same path.
    #[error(
        "data directory {path} cannot be mounted into sandboxes at the same path: {reserved} is built by the sandbox itself"
    )]
    Reserved {
        /// The resolved path.
        path: PathBuf,
        /// The reserved prefix it lies under.
        reserved: &'static str,
    },
}

impl DataDirError {
    /// A remedy, where one is known.
    pub fn hint(&self) -> Option<String> {
        match self {
            DataDirError::Reserved { .. } => Some(
                "choose a data directory outside /, /proc, /dev, /tmp, /etc, /work, /usr, /bin, /sbin and /lib* (for example /var/lib/kakoi or /var/tmp/kakoi)".into(),
            ),
            DataDirError::Create { .. } => {
                Some("pass a writable directory with --data-dir or KAKOI_DATA_DIR".into())
            }
            _ => None,
        }
    }
}

/// The default data directory for a process with effective uid `euid`, reading
/// `XDG_DATA_HOME` and `HOME` through `var`.
pub fn default_data_dir_for(
    euid: u32,
    var: impl Fn(&str) -> Option<String>,
) -> Result<PathBuf, DataDirError> {
    if euid == 0 {
        return Ok(PathBuf::from("/var/lib/kakoi"));
    }
    if let Some(xdg) = var("XDG_DATA_HOME").filter(|v| Path::new(v).is_absolute()) {
        return Ok(Path::new(&xdg).join("kakoi"));
    }
    match var("HOME").filter(|v| Path::new(v).is_absolute()) {
        Some(home) => Ok(Path::new(&home).join(".local/share/kakoi")),
        None => Err(DataDirError::NoHome),
    }
}

/// The default data directory of this process (`KAKOI_DATA_DIR` is not consulted here).
pub fn default_data_dir() -> Result<PathBuf, DataDirError> {
    default_data_dir_for(nix::unistd::geteuid().as_raw(), |k| std::env::var(k).ok())
}

/// The data directory to use: `explicit`, else `KAKOI_DATA_DIR`, else the default.
pub fn resolve(explicit: Option<&Path>) -> Result<PathBuf, DataDirError> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    match std::env::var_os(DATA_DIR_ENV) {
        Some(v) if !v.is_empty() => Ok(PathBuf::from(v)),
        _ => default_data_dir(),
    }
}

/// Mode of the data directory and of the directories leading to envs: traversable but not
/// listable by others. A sandbox's mount steps run as its mapped host uid, which must be
/// able to reach the env, toolchain and cache directories it binds; what they contain is
/// protected by their own modes (the uv cache is 0700, owned by the build uid).
pub const TRAVERSE_MODE: u32 = 0o711;

/// Create the directory and return its canonical path, checked to be bindable. As root, a
/// data directory that others cannot traverse gets `o+x`/`g+x` (see [`TRAVERSE_MODE`]).
pub fn prepare(path: &Path) -> Result<PathBuf, DataDirError> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    if !path.is_absolute() {
        return Err(DataDirError::Relative { path: path.into() });
    }
    let create = |source| DataDirError::Create {
        path: path.into(),
        source,
    };
    if !path.exists() {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(TRAVERSE_MODE)
            .create(path)
            .map_err(create)?;
    }
    let canonical = std::fs::canonicalize(path).map_err(create)?;
    check_bindable(&canonical)?;
    let meta = std::fs::metadata(&canonical).map_err(create)?;
    let euid = nix::unistd::geteuid().as_raw();
    if euid == 0 && meta.uid() == 0 && meta.mode() & 0o011 != 0o011 {
        let mode = (meta.mode() & 0o7777) | 0o011;
        std::fs::set_permissions(&canonical, std::fs::Permissions::from_mode(mode))
            .map_err(create)?;
    }
    Ok(canonical)
}

/// Refuse paths that a sandbox cannot bind at the same location.
pub fn check_bindable(path: &Path) -> Result<(), DataDirError> {
    let normal: PathBuf = path
        .components()
        .filter(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        .collect();
    if normal == Path::new("/") {
        return Err(DataDirError::Reserved {
            path: path.into(),
            reserved: "/",
        });
    }
    match RESERVED.iter().find(|r| normal.starts_with(r)) {
        Some(reserved) => Err(DataDirError::Reserved {
            path: path.into(),
            reserved,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_uid_and_xdg() {
        let none = |_: &str| None;
        assert_eq!(
            default_data_dir_for(0, none).unwrap(),
            PathBuf::from("/var/lib/kakoi")
        );
        let xdg = |k: &str| match k {
            "XDG_DATA_HOME" => Some("/home/a/.data".to_string()),
            "HOME" => Some("/home/a".to_string()),
            _ => None,
        };
        assert_eq!(
            default_data_dir_for(1000, xdg).unwrap(),
            PathBuf::from("/home/a/.data/kakoi")
        );
        let home = |k: &str| (k == "HOME").then(|| "/home/b".to_string());
        assert_eq!(
            default_data_dir_for(1000, home).unwrap(),
            PathBuf::from("/home/b/.local/share/kakoi")
        );
        let relative_xdg = |k: &str| match k {
            "XDG_DATA_HOME" => Some("rel".to_string()),
            "HOME" => Some("/home/c".to_string()),
            _ => None,
        };
        assert_eq!(
            default_data_dir_for(1000, relative_xdg).unwrap(),
            PathBuf::from("/home/c/.local/share/kakoi")
        );
        assert!(matches!(
            default_data_dir_for(1000, none),
            Err(DataDirError::NoHome)
        ));
    }

    #[test]
    fn reserved_prefixes_are_refused() {
        for bad in ["/", "/tmp/x", "/work/data", "/usr/local/kakoi", "/lib64"] {
            assert!(
                matches!(
                    check_bindable(Path::new(bad)),
                    Err(DataDirError::Reserved { .. })
                ),
                "{bad} accepted"
            );
        }
        for good in [
            "/var/lib/kakoi",
            "/home/u/.local/share/kakoi",
            "/tmpfoo",
            "/opt/k",
        ] {
            check_bindable(Path::new(good)).unwrap();
        }
    }
}
