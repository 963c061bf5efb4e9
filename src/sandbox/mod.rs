//! The native sandbox: prepare, clone, child checklist, init, parent.

pub mod cgroup;
