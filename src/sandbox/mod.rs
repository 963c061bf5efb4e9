//! The native sandbox: prepare, clone, child checklist, init, parent.

pub mod cgroup;
pub mod landlock;
pub mod seccomp;
