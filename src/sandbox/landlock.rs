//! Landlock (placeholder while seccomp is built).
