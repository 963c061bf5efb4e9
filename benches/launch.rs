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
//! The `library` group runs the launch path in this process through the library
//! (`Sandbox::run` of `/bin/true`, one `Sandbox` reused like a server's launcher does), so
//! kakoi's own process start is not in it:
//!
//! - `library/true_all_layers`: every layer, no cgroup;
//! - `library/true_no_seccomp_landlock`: the same without seccomp and Landlock — the
//!   difference is what those two layers cost on the launch path (issue 3: ≤ 0.3 ms);
//! - `library/true_all_layers_cgroup`: every layer with a cgroup;
//! - `library/seccomp_landlock_cost`: the two configurations above interleaved, one run of
//!   each per iteration, reporting the *difference* (with layers − without). Criterion runs
//!   benchmarks one after another, so on a shared machine the load can change between two
//!   of them; this one is immune to that.
//!
//! The `kakoi` binary is the one cargo built for this bench
//! (`CARGO_BIN_EXE_kakoi`, bench profile = release settings). Must run as root
//! (or where unprivileged user namespaces work); run with
//! `cargo bench --bench launch`. See `benches/README.md`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use criterion::{Criterion, SamplingMode};
use kakoi::sandbox::{CgroupMode, SeccompSetting};
use kakoi::{RunSpec, Sandbox, SandboxConfig, Status};

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

/// In-process launches through the library (the bench process is single-threaded, as
/// `Sandbox::run` requires).
fn library(c: &mut Criterion) {
    let all = SandboxConfig {
        cgroups: CgroupMode::Off,
        ..SandboxConfig::default()
    };
    let bare_layers = SandboxConfig {
        seccomp: SeccompSetting::Disabled,
        landlock: None,
        ..all.clone()
    };
    let with_cgroup = SandboxConfig::default();
    let cases = [
        ("true_all_layers", all),
        ("true_no_seccomp_landlock", bare_layers),
        ("true_all_layers_cgroup", with_cgroup),
    ];
    let spec = RunSpec::command(["/bin/true"]);
    let layered = Sandbox::new(cases[0].1.clone()).expect("sandbox");
    let plain = Sandbox::new(cases[1].1.clone()).expect("sandbox");
    let mut group = c.benchmark_group("library");
    group
        .sample_size(50)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    group.bench_function("seccomp_landlock_cost", |b| {
        b.iter_custom(|iters| {
            let (mut with, mut without) = (Duration::ZERO, Duration::ZERO);
            for _ in 0..iters {
                let started = std::time::Instant::now();
                assert_eq!(layered.run(&spec).expect("run").status, Status::Ok);
                with += started.elapsed();
                let started = std::time::Instant::now();
                assert_eq!(plain.run(&spec).expect("run").status, Status::Ok);
                without += started.elapsed();
            }
            with.saturating_sub(without)
        })
    });
    for (name, config) in cases {
        let sandbox = Sandbox::new(config).unwrap_or_else(|e| panic!("{name}: {e}"));
        let check = sandbox.run(&spec).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(check.status, Status::Ok, "{name}: {check:#?}");
        group.bench_function(name, |b| {
            b.iter(|| {
                let r = sandbox.run(&spec).expect("run");
                assert_eq!(r.status, Status::Ok);
            })
        });
    }
    group.finish();
}

// Written out instead of `criterion_group!`/`criterion_main!`, whose generated
// `pub fn` has no doc comment and would trip `missing_docs`.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    launch(&mut c);
    library(&mut c);
    c.final_summary();
}
