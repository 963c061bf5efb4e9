//! The child → parent report protocol over a CLOEXEC `SOCK_SEQPACKET` socketpair.
//!
//! Every message is 16 bytes: `kind`, `stage`, `detail`, `value` (native-endian u32/i32).
//! The parent also writes single release bytes the other way. The child's copy of the socket
//! is CLOEXEC, and the init keeps its own copy open, so the parent learns:
//! - `Error { stage, detail, errno }` then EOF: setup failed, nothing ran (exit 125);
//! - `ExecOk`: the payload's execve succeeded;
//! - `Exit { status }`: the payload's raw wait status, sent by init before it exits;
//! - `Listener` with an fd (SCM_RIGHTS): the seccomp user-notification listener;
//! - `Workdir` with an fd: the workdir tmpfs root, for collecting returned files after the run.

/// Message kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// A setup step failed.
    Error = 1,
    /// The payload was exec'd.
    ExecOk = 2,
    /// The payload ended; `value` is its wait status.
    Exit = 3,
    /// The seccomp listener fd travels with this message.
    Listener = 4,
    /// An `O_PATH` fd of the workdir's root travels with this message.
    Workdir = 5,
}

/// The child's checklist steps, in order. The numbers travel on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Stage {
    /// Waiting for the parent to write the id maps.
    WaitRelease = 1,
    /// PR_SET_PDEATHSIG.
    ParentDeathSignal,
    /// setsid().
    Setsid,
    /// dup2 of stdin/stdout/stderr.
    Stdio,
    /// Making every mount private.
    MountPrivate,
    /// One step of building the new root (detail = step index).
    Rootfs,
    /// Bringing `lo` up.
    Loopback,
    /// Handing the workdir to the launcher (for returned files).
    Workdir,
    /// sethostname.
    Hostname,
    /// Raising oom_score_adj.
    OomScore,
    /// pivot_root.
    PivotRoot,
    /// Detaching the old root.
    DetachOldRoot,
    /// chdir into the workdir.
    Chdir,
    /// Remounting the root read-only.
    RemountRoot,
    /// Waiting for the parent to join the cgroup.
    WaitCgroup,
    /// unshare(CLONE_NEWCGROUP).
    CgroupNamespace,
    /// setrlimit (detail = index).
    Rlimit,
    /// close_range.
    CloseFds,
    /// setgroups.
    Setgroups,
    /// setresgid.
    Setgid,
    /// setresuid.
    Setuid,
    /// Dropping capabilities.
    DropCapabilities,
    /// PR_SET_NO_NEW_PRIVS.
    NoNewPrivs,
    /// Landlock.
    Landlock,
    /// seccomp.
    Seccomp,
    /// Blocking signals in init.
    InitSignals,
    /// Forking the payload.
    Fork,
    /// execve of the payload.
    Exec,
    /// The child moving itself into its v1 cgroup (detail = hierarchy index).
    CgroupJoin,
}

impl Stage {
    /// Every stage, for decoding.
    pub const ALL: [Stage; 29] = [
        Stage::WaitRelease,
        Stage::ParentDeathSignal,
        Stage::Setsid,
        Stage::Stdio,
        Stage::MountPrivate,
        Stage::Rootfs,
        Stage::Loopback,
        Stage::Workdir,
        Stage::Hostname,
        Stage::OomScore,
        Stage::PivotRoot,
        Stage::DetachOldRoot,
        Stage::Chdir,
        Stage::RemountRoot,
        Stage::WaitCgroup,
        Stage::CgroupNamespace,
        Stage::Rlimit,
        Stage::CloseFds,
        Stage::Setgroups,
        Stage::Setgid,
        Stage::Setuid,
        Stage::DropCapabilities,
        Stage::NoNewPrivs,
        Stage::Landlock,
        Stage::Seccomp,
        Stage::InitSignals,
        Stage::Fork,
        Stage::Exec,
        Stage::CgroupJoin,
    ];

    /// Decode a wire number.
    pub fn from_u32(n: u32) -> Option<Stage> {
        Stage::ALL.iter().copied().find(|s| *s as u32 == n)
    }

    /// kebab-case name used in results and messages.
    pub fn name(self) -> &'static str {
        match self {
            Stage::WaitRelease => "wait-release",
            Stage::ParentDeathSignal => "parent-death-signal",
            Stage::Setsid => "setsid",
            Stage::Stdio => "stdio",
            Stage::MountPrivate => "mount-private",
            Stage::Rootfs => "rootfs",
            Stage::Loopback => "loopback",
            Stage::Workdir => "workdir",
            Stage::Hostname => "hostname",
            Stage::OomScore => "oom-score",
            Stage::PivotRoot => "pivot-root",
            Stage::DetachOldRoot => "detach-old-root",
            Stage::Chdir => "chdir",
            Stage::RemountRoot => "remount-root",
            Stage::WaitCgroup => "wait-cgroup",
            Stage::CgroupNamespace => "cgroup-namespace",
            Stage::Rlimit => "rlimit",
            Stage::CloseFds => "close-fds",
            Stage::Setgroups => "setgroups",
            Stage::Setgid => "setgid",
            Stage::Setuid => "setuid",
            Stage::DropCapabilities => "drop-capabilities",
            Stage::NoNewPrivs => "no-new-privs",
            Stage::Landlock => "landlock",
            Stage::Seccomp => "seccomp",
            Stage::InitSignals => "init-signals",
            Stage::Fork => "fork",
            Stage::Exec => "exec",
            Stage::CgroupJoin => "cgroup-join",
        }
    }
}

/// One message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    /// What happened.
    pub kind: Kind,
    /// Stage number (errors only).
    pub stage: u32,
    /// Stage-specific index (errors only).
    pub detail: u32,
    /// errno (errors) or wait status (exit).
    pub value: i32,
}

/// Size of an encoded message.
pub const MESSAGE_LEN: usize = 16;

impl Message {
    /// An error report.
    pub fn error(stage: Stage, detail: u32, errno: i32) -> Message {
        Message {
            kind: Kind::Error,
            stage: stage as u32,
            detail,
            value: errno,
        }
    }

    /// A message with only a kind (and value).
    pub fn simple(kind: Kind, value: i32) -> Message {
        Message {
            kind,
            stage: 0,
            detail: 0,
            value,
        }
    }

    /// Encode into a fixed buffer (no allocation: the child uses it).
    pub fn encode(&self) -> [u8; MESSAGE_LEN] {
        let mut out = [0u8; MESSAGE_LEN];
        out[0..4].copy_from_slice(&(self.kind as u32).to_ne_bytes());
        out[4..8].copy_from_slice(&self.stage.to_ne_bytes());
        out[8..12].copy_from_slice(&self.detail.to_ne_bytes());
        out[12..16].copy_from_slice(&self.value.to_ne_bytes());
        out
    }

    /// Decode; `None` for a short or unknown message.
    pub fn decode(buf: &[u8]) -> Option<Message> {
        if buf.len() != MESSAGE_LEN {
            return None;
        }
        let word = |i: usize| u32::from_ne_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
        let kind = match word(0) {
            1 => Kind::Error,
            2 => Kind::ExecOk,
            3 => Kind::Exit,
            4 => Kind::Listener,
            5 => Kind::Workdir,
            _ => return None,
        };
        Some(Message {
            kind,
            stage: word(4),
            detail: word(8),
            value: word(12) as i32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for m in [
            Message::error(Stage::PivotRoot, 7, libc::EPERM),
            Message::simple(Kind::ExecOk, 0),
            Message::simple(Kind::Exit, 0x0900),
            Message::simple(Kind::Workdir, 0),
        ] {
            assert_eq!(Message::decode(&m.encode()), Some(m));
        }
        assert_eq!(Message::decode(&[1, 2, 3]), None);
        assert_eq!(Message::decode(&[9; 16]), None);
    }

    #[test]
    fn stages_decode_and_have_distinct_names() {
        let mut names = std::collections::HashSet::new();
        for s in Stage::ALL {
            assert_eq!(Stage::from_u32(s as u32), Some(s));
            assert!(names.insert(s.name()));
        }
        assert_eq!(Stage::from_u32(0), None);
    }
}
