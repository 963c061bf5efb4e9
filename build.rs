//! Compiles the seccomp policies in `seccomp/<arch>/` to BPF for the target architecture.
//!
//! Outputs in `OUT_DIR`: `default.conditional.bpf` (the allowlist's argument rules as a raw
//! `sock_filter` array, little-endian `code:u16 jt:u8 jf:u8 k:u32`) and `seccomp_generated.rs`
//! (syscall names of the policy and the architecture's syscall table), included by
//! `src/sandbox/seccomp.rs`, which assembles the one filter a run installs.
//!
//! Also sets `KAKOI_WORKER_RECIPE`: the digest of the Docker worker recipe
//! (`docker/worker/Dockerfile` and `kakoi-entry`), part of the default worker image tag, so
//! kakoi builds with different recipes never fight over one tag on a shared engine.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[path = "seccomp/compile.rs"]
#[allow(dead_code)]
mod compile;

/// 16 hex digits of SHA-256(Dockerfile, NUL, entry script): the same digest as
/// `kakoi::backend::docker::entry::recipe_digest`, which a unit test checks.
fn worker_recipe() {
    use sha2::{Digest as _, Sha256};
    println!("cargo::rerun-if-changed=docker/worker/Dockerfile");
    println!("cargo::rerun-if-changed=docker/worker/kakoi-entry");
    let read =
        |path: &str| std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let mut h = Sha256::new();
    h.update(read("docker/worker/Dockerfile"));
    h.update(b"\0");
    h.update(read("docker/worker/kakoi-entry"));
    let digest: String = h
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    println!("cargo::rustc-env=KAKOI_WORKER_RECIPE={digest}");
}

fn main() {
    worker_recipe();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dir = Path::new("seccomp").join(&arch);
    println!("cargo::rerun-if-changed=seccomp/compile.rs");
    println!("cargo::rerun-if-changed=seccomp/{arch}");
    let policy_path = dir.join("default.json");
    let table_path = dir.join("syscall_table.tsv");
    let mut generated = String::new();
    writeln!(
        generated,
        "/// Architecture the embedded policy was compiled for."
    )
    .unwrap();
    writeln!(generated, "pub const POLICY_ARCH: &str = {arch:?};").unwrap();

    let supported = matches!(arch.as_str(), "x86_64" | "aarch64");
    let (allowed, reported, plain, enosys, deny_errno, enosys_errno) = if supported {
        let target = seccompiler::TargetArch::try_from(arch.as_str()).expect("supported arch");
        let text = std::fs::read_to_string(&policy_path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", policy_path.display()));
        let compiled = compile::compile_policy(&text, target)
            .unwrap_or_else(|e| panic!("invalid seccomp policy {}: {e}", policy_path.display()));
        let mut bytes = Vec::with_capacity(compiled.allow.len() * 8);
        for instruction in &compiled.allow {
            bytes.extend_from_slice(&instruction.code.to_le_bytes());
            bytes.push(instruction.jt);
            bytes.push(instruction.jf);
            bytes.extend_from_slice(&instruction.k.to_le_bytes());
        }
        std::fs::write(out.join("default.conditional.bpf"), bytes).unwrap();
        (
            compiled.allowed,
            compiled.reported,
            compiled.plain,
            compiled.enosys_names,
            compiled.deny_errno,
            compiled.enosys_errno,
        )
    } else {
        // Unsupported target: an empty policy; `SeccompPolicy::default_policy` reports it.
        std::fs::write(out.join("default.conditional.bpf"), []).unwrap();
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), 1, 38)
    };
    let list = |names: &[String]| names.iter().map(|n| format!("{n:?}, ")).collect::<String>();
    writeln!(generated, "/// Syscalls the default policy allows, sorted.").unwrap();
    writeln!(
        generated,
        "pub const DEFAULT_ALLOWED: &[&str] = &[{}];",
        list(&allowed)
    )
    .unwrap();
    writeln!(
        generated,
        "/// Syscalls the default policy allows whatever their arguments, sorted."
    )
    .unwrap();
    writeln!(
        generated,
        "pub const DEFAULT_PLAIN: &[&str] = &[{}];",
        list(&plain)
    )
    .unwrap();
    writeln!(
        generated,
        "/// Syscalls the default policy reports as violations, sorted."
    )
    .unwrap();
    writeln!(
        generated,
        "pub const DEFAULT_REPORTED: &[&str] = &[{}];",
        list(&reported)
    )
    .unwrap();
    writeln!(
        generated,
        "/// Syscalls the default policy answers with ENOSYS, sorted."
    )
    .unwrap();
    writeln!(
        generated,
        "pub const DEFAULT_ENOSYS: &[&str] = &[{}];",
        list(&enosys)
    )
    .unwrap();
    writeln!(
        generated,
        "/// The errno unknown syscalls get under the default policy."
    )
    .unwrap();
    writeln!(
        generated,
        "pub const DEFAULT_DENY_ERRNO: u32 = {deny_errno};"
    )
    .unwrap();
    writeln!(
        generated,
        "/// The errno the default policy's `enosys` filter answers.\npub const DEFAULT_ENOSYS_ERRNO: u32 = {enosys_errno};"
    )
    .unwrap();

    let mut table = String::new();
    let mut by_name: Vec<(String, i64)> = Vec::new();
    if supported {
        let text = std::fs::read_to_string(&table_path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", table_path.display()));
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let (nr, name) = line
                .split_once('\t')
                .unwrap_or_else(|| panic!("{}: bad line {line:?}", table_path.display()));
            let nr: i64 = nr.parse().expect("syscall number");
            write!(table, "({nr}, {name:?}), ").unwrap();
            by_name.push((name.to_string(), nr));
        }
    }
    by_name.sort();
    let by_name: String = by_name
        .iter()
        .map(|(name, nr)| format!("({name:?}, {nr}), "))
        .collect();
    writeln!(
        generated,
        "/// `(number, name)` for the target architecture, sorted by number."
    )
    .unwrap();
    writeln!(
        generated,
        "pub const SYSCALL_TABLE: &[(i64, &str)] = &[{table}];"
    )
    .unwrap();
    writeln!(
        generated,
        "/// `(name, number)` for the target architecture, sorted by name."
    )
    .unwrap();
    writeln!(
        generated,
        "pub const SYSCALLS_BY_NAME: &[(&str, i64)] = &[{by_name}];"
    )
    .unwrap();
    std::fs::write(out.join("seccomp_generated.rs"), generated).unwrap();
}
