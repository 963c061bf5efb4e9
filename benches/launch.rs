//! Launch-path benchmarks for kakoi (criterion).
//!
//! Each benchmark spawns a process and waits for it, so it measures the whole
//! launch path end to end, the way a caller of the `kakoi` binary sees it:
//!
//! - `spawn/bare_true`: `/bin/true` via [`std::process::Command`] (the floor);
//! - `spawn/kakoi_true`: `kakoi exec -- /bin/true` with every layer the build has
//!   (all namespaces, new root, cgroup, rlimits);
//! - `spawn/kakoi_true_nocgroup`: the same with `--no-cgroup`, which isolates the
//!   cost of creating/attaching/removing the cgroup;
//! - `spawn/bare_python`, `spawn/kakoi_python`: `python3.11 -c pass`, the
//!   workload the target is stated for.
//!
//! The `kakoi` binary is the one cargo built for this bench
//! (`CARGO_BIN_EXE_kakoi`, bench profile = release settings). Must run as root
//! (or where unprivileged user namespaces work); run with
//! `cargo bench --bench launch`. See `benches/README.md`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use criterion::{Criterion, SamplingMode};

const KAKOI: &str = env!("CARGO_BIN_EXE_kakoi");
const PYTHON: &str = "/usr/bin/python3.11";

/// Run `argv` to completion with no I/O attached; panic if it fails so a broken
/// sandbox never shows up as a fast one.
fn run(argv: &[&str]) {
    let status = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", argv[0]));
    assert!(status.success(), "{argv:?} failed: {status}");
}

/// Run once with stderr visible, so a setup failure is explained before timing.
fn check(argv: &[&str]) {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", argv[0]));
    assert!(
        out.status.success(),
        "{argv:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn launch(c: &mut Criterion) {
    let python = Path::new(PYTHON).exists();
    let mut cases: Vec<(&str, Vec<&str>)> = vec![
        ("bare_true", vec!["/bin/true"]),
        ("kakoi_true", vec![KAKOI, "exec", "--", "/bin/true"]),
        (
            "kakoi_true_nocgroup",
            vec![KAKOI, "exec", "--no-cgroup", "--", "/bin/true"],
        ),
    ];
    if python {
        cases.push(("bare_python", vec![PYTHON, "-c", "pass"]));
        cases.push((
            "kakoi_python",
            vec![KAKOI, "exec", "--", PYTHON, "-c", "pass"],
        ));
    } else {
        eprintln!("note: {PYTHON} not found; skipping the python benchmarks");
    }
    for (_, argv) in &cases {
        check(argv);
    }

    let mut group = c.benchmark_group("spawn");
    group
        .sample_size(30)
        // Each iteration is milliseconds long: flat sampling keeps the run under budget.
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (name, argv) in &cases {
        group.bench_function(*name, |b| b.iter(|| run(argv)));
    }
    group.finish();
}

// Written out instead of `criterion_group!`/`criterion_main!`, whose generated
// `pub fn` has no doc comment and would trip `missing_docs`.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    launch(&mut c);
    c.final_summary();
}
