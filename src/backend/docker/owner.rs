//! Who owns a container: every container kakoi creates carries `kakoi.owner =
//! <pid>.<start time>@<boot id>` of the kakoi process that created it, so a later kakoi can
//! tell a container whose owner died (SIGKILL, crash, power loss) from one that is in use,
//! and remove it.

use std::path::Path;

/// Identity of a process on one boot of one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// pid.
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`): tells a reused
    /// pid apart.
    pub start: u64,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
}

impl Owner {
    /// This process.
    pub fn current() -> Owner {
        let pid = std::process::id();
        Owner {
            pid,
            start: start_time(Path::new("/proc"), pid).unwrap_or(0),
            boot_id: boot_id(Path::new("/proc")),
        }
    }

    /// The label value.
    pub fn label(&self) -> String {
        format!("{}.{}@{}", self.pid, self.start, self.boot_id)
    }

    /// Parse a label value.
    pub fn parse(label: &str) -> Option<Owner> {
        let (process, boot_id) = label.split_once('@')?;
        let (pid, start) = process.split_once('.')?;
        Some(Owner {
            pid: pid.parse().ok()?,
            start: start.parse().ok()?,
            boot_id: boot_id.to_owned(),
        })
    }

    /// Whether a container owned by `self` is stale, seen from this host (`proc` is its
    /// /proc) while the container is `running` or not.
    ///
    /// - Same boot: stale when the owner process is gone (no such pid, or the pid was
    ///   reused by a process with another start time).
    /// - Another boot id: either a previous boot of this host (nothing of it runs any more,
    ///   so a container still *running* cannot be its) or another host sharing the engine.
    ///   Stale only when the container is not running; a running one is left to its owner.
    pub fn is_stale(&self, here: &Owner, proc: &Path, running: bool) -> bool {
        if self.boot_id != here.boot_id {
            return !running;
        }
        match start_time(proc, self.pid) {
            Some(start) => start != self.start,
            None => true,
        }
    }
}

fn boot_id(proc: &Path) -> String {
    std::fs::read_to_string(proc.join("sys/kernel/random/boot_id"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Field 22 (starttime) of `<proc>/<pid>/stat`; the command name (field 2) may hold spaces
/// and parentheses, so fields are counted after its last `)`.
fn start_time(proc: &Path, pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc.join(pid.to_string()).join("stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest starts at field 3 (state); starttime is field 22.
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc(pid: u32, start: u64, boot: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sys/kernel/random")).unwrap();
        std::fs::write(dir.path().join("sys/kernel/random/boot_id"), boot).unwrap();
        let p = dir.path().join(pid.to_string());
        std::fs::create_dir_all(&p).unwrap();
        let mut fields: Vec<String> = (3..=30).map(|i| i.to_string()).collect();
        fields[22 - 3] = start.to_string();
        std::fs::write(
            p.join("stat"),
            format!("{pid} (a) b) {}\n", fields.join(" ")),
        )
        .unwrap();
        dir
    }

    #[test]
    fn labels_round_trip() {
        let o = Owner {
            pid: 42,
            start: 777,
            boot_id: "b-1".into(),
        };
        assert_eq!(Owner::parse(&o.label()), Some(o));
        assert_eq!(Owner::parse("garbage"), None);
        assert_eq!(Owner::parse("1.x@b"), None);
    }

    #[test]
    fn staleness_follows_the_owner_process() {
        let proc = fake_proc(42, 777, "boot-a\n");
        let here = Owner {
            pid: 1,
            start: 1,
            boot_id: boot_id(proc.path()),
        };
        assert_eq!(here.boot_id, "boot-a");
        assert_eq!(start_time(proc.path(), 42), Some(777));
        let alive = Owner {
            pid: 42,
            start: 777,
            boot_id: "boot-a".into(),
        };
        assert!(!alive.is_stale(&here, proc.path(), true));
        let reused = Owner {
            start: 5,
            ..alive.clone()
        };
        assert!(reused.is_stale(&here, proc.path(), true));
        let gone = Owner {
            pid: 43,
            ..alive.clone()
        };
        assert!(gone.is_stale(&here, proc.path(), false));
        let elsewhere = Owner {
            boot_id: "boot-b".into(),
            ..alive
        };
        assert!(!elsewhere.is_stale(&here, proc.path(), true));
        assert!(elsewhere.is_stale(&here, proc.path(), false));
    }

    #[test]
    fn current_process_is_alive() {
        let me = Owner::current();
        assert!(me.start > 0);
        assert!(!me.is_stale(&me, Path::new("/proc"), true));
    }
}
