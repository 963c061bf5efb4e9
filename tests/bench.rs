//! `kakoi bench` end to end with a tiny N: the JSON is well-formed (it parses back into
//! `kakoi::bench::report::Report`), every available backend's runs were checked and gave
//! positive, ordered statistics, an unavailable backend is reported as such, and a broken
//! backend (a "kakoi" that runs nothing) gets FAILED rows and no numbers. No timing targets.
//!
//! The env workload uses `six` (tiny) in the env tests' shared data dir under
//! `/var/tmp/kakoi-test-env/shared`; the cold runs download it into fresh stores.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{kakoi, pypi_available, require, sandbox_available};
use kakoi::backend::docker::{DockerBackend, DockerConfig};
use kakoi::bench::report::{Report, RowStatus};

const BASE: &str = "/var/tmp/kakoi-test-env";

fn base() -> PathBuf {
    let base = PathBuf::from(BASE);
    std::fs::create_dir_all(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    base
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn bwrap_installed() -> bool {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .any(|d| d.join("bwrap").is_file())
}

fn docker_missing() -> Option<String> {
    DockerBackend::new(DockerConfig::default())
        .err()
        .map(|e| e.to_string())
}

fn read_report(dir: &Path) -> Report {
    let json = std::fs::read_to_string(dir.join("bench-latest.json")).unwrap();
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

fn kakoi_bench(args: &[&str]) -> Output {
    kakoi().arg("bench").args(args).output().unwrap()
}

#[test]
fn bench_measures_every_available_backend_and_checks_every_run() {
    if !sandbox_available() {
        return;
    }
    let bwrap = require(
        "bwrap",
        bwrap_installed(),
        "bwrap not installed (apt-get install bubblewrap): its rows must read unavailable",
    );
    let docker_reason = docker_missing();
    let docker = require(
        "docker",
        docker_reason.is_none(),
        &format!(
            "Docker mode unavailable ({}): its rows must read unavailable",
            docker_reason.as_deref().unwrap_or("")
        ),
    );
    let env = pypi_available();
    let scratch = tempfile::Builder::new()
        .prefix("bench-")
        .tempdir_in(base())
        .unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let req = scratch.path().join("requirements.txt");
    std::fs::write(&req, "six==1.17.0\n").unwrap();
    let out_dir = scratch.path().join("out");
    let shared = base().join("shared");
    let workloads = if env {
        "pass,hello,numpy"
    } else {
        "pass,hello"
    };
    let mut args = vec![
        "--runs",
        "3",
        "--warmup",
        "1",
        "--workloads",
        workloads,
        "--concurrency",
        "1,2",
        "--concurrency-runs",
        "1",
        "--cold-runs",
        "1",
        "--import",
        "six",
        "-r",
        req.to_str().unwrap(),
        "--data-dir",
        shared.to_str().unwrap(),
        "--scratch",
        scratch.path().to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ];
    args.extend(["--backends", "bare,kakoi,kakoi-nocg,bwrap,docker"]);
    let out = kakoi_bench(&args);
    assert!(out.status.success(), "{}", text(&out));
    let report = read_report(&out_dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("| workload | backend | median ms"),
        "{stdout}"
    );

    let expected = [
        ("bare", true),
        ("kakoi", true),
        ("kakoi-nocg", true),
        ("bwrap", bwrap),
        ("docker", docker),
    ];
    assert_eq!(report.backends.len(), 5);
    for (b, info) in expected.iter().zip(&report.backends) {
        assert_eq!((info.name.as_str(), info.available), *b, "{info:?}");
        assert_eq!(info.reason.is_some(), !b.1);
    }
    assert_eq!(report.settings.runs, 3);
    let n_workloads = workloads.split(',').count();
    assert_eq!(report.warm.len(), n_workloads * 5);
    for row in &report.warm {
        let available = expected.iter().any(|(b, a)| *b == row.backend && *a);
        if !available {
            assert_eq!(row.status, RowStatus::Unavailable, "{row:?}");
            assert!(row.summary.is_none() && row.samples_ms.is_empty() && row.error.is_some());
            continue;
        }
        assert_eq!(row.status, RowStatus::Ok, "{row:?}");
        assert_eq!(row.failures, 0);
        let s = row.summary.as_ref().expect("numbers");
        assert_eq!((s.n, row.samples_ms.len()), (3, 3), "{row:?}");
        assert!(
            row.samples_ms.iter().all(|&ms| ms > 0.0 && ms < 60_000.0),
            "{row:?}"
        );
        assert!(s.min > 0.0 && s.min <= s.median && s.median <= s.p95 && s.p95 <= s.max);
        assert!(row.first_ms.is_some_and(|ms| ms > 0.0));
        let ratio = row.ratio_median.expect("ratio to bare");
        assert!(ratio > 0.0 && ratio.is_finite());
        if row.backend == "bare" {
            assert_eq!(row.ratio_median, Some(1.0));
        }
        // The command really is the backend's.
        let cmd = row.command.join(" ");
        match row.backend.as_str() {
            "kakoi" => {
                assert!(cmd.contains("--backend native") && !cmd.contains("--no-cgroup"))
            }
            "kakoi-nocg" => assert!(cmd.contains("--backend native --no-cgroup"), "{cmd}"),
            "docker" => assert!(cmd.contains("--backend docker"), "{cmd}"),
            "bwrap" => assert!(cmd.contains("--unshare-all"), "{cmd}"),
            _ => assert!(cmd.contains("python"), "{cmd}"),
        }
    }
    if env {
        assert_eq!(report.cold.len(), 5);
        for row in &report.cold {
            let want = match row.backend.as_str() {
                "bwrap" if bwrap => RowStatus::NotApplicable,
                "kakoi-nocg" => RowStatus::NotApplicable,
                "docker" if docker => RowStatus::Ok,
                "bare" | "kakoi" => RowStatus::Ok,
                _ => RowStatus::Unavailable,
            };
            assert_eq!(row.status, want, "{row:?}");
            if want == RowStatus::Ok {
                assert!(
                    row.samples_ms.len() == 1 && row.samples_ms[0] > 0.0,
                    "{row:?}"
                );
            }
        }
    } else {
        assert!(report.cold.is_empty());
    }
    assert_eq!(report.concurrency.len(), 2 * 5);
    for row in &report.concurrency {
        assert_eq!(row.runs, row.parallel);
        let available = expected.iter().any(|(b, a)| *b == row.backend && *a);
        if available {
            assert_eq!(row.status, RowStatus::Ok, "{row:?}");
            assert!(row.runs_per_s.is_some_and(|x| x > 0.0), "{row:?}");
        } else {
            assert_eq!(row.status, RowStatus::Unavailable, "{row:?}");
        }
    }
    assert!(report.pass_target().is_some());
    assert!(report.host.loadavg_start.is_some() && report.host.cpus > 0);
    for name in ["bench-latest.md", "bench-latest.svg"] {
        assert!(out_dir.join(name).is_file(), "{name}");
    }
    let svg = std::fs::read_to_string(out_dir.join("bench-latest.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("kakoi"));
    // --replot redraws the same table from the JSON.
    let again = scratch.path().join("again");
    let out = kakoi_bench(&[
        "--replot",
        out_dir.join("bench-latest.json").to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(again.join("bench-latest.md")).unwrap(),
        std::fs::read_to_string(out_dir.join("bench-latest.md")).unwrap()
    );
    assert!(again.join("bench-latest.svg").is_file());
    // The scratch dir (cold data dirs, main.py) is gone.
    let left: Vec<_> = std::fs::read_dir(scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("kakoi-bench-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_backend_that_runs_nothing_gets_failed_rows_and_no_numbers() {
    // `/bin/true exec -- python -c pass` exits 0 with the empty stdout `pass` expects: only
    // the preflight (output computed by Python) catches it. Needs no sandbox.
    let dir = tempfile::tempdir().unwrap();
    let out = kakoi_bench(&[
        "--runs",
        "2",
        "--warmup",
        "0",
        "--workloads",
        "pass",
        "--backends",
        "bare,kakoi",
        "--kakoi",
        "/bin/true",
        "--concurrency",
        "1",
        "--concurrency-runs",
        "1",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = read_report(dir.path());
    let kakoi_row = report.warm.iter().find(|r| r.backend == "kakoi").unwrap();
    assert_eq!(kakoi_row.status, RowStatus::Failed);
    assert!(kakoi_row.summary.is_none() && kakoi_row.samples_ms.is_empty());
    assert!(
        kakoi_row.error.as_deref().unwrap().contains("preflight"),
        "{kakoi_row:?}"
    );
    let conc = report
        .concurrency
        .iter()
        .find(|r| r.backend == "kakoi")
        .unwrap();
    assert_eq!(conc.status, RowStatus::Failed);
    assert!(conc.runs_per_s.is_none());
    let bare = report.warm.iter().find(|r| r.backend == "bare").unwrap();
    assert_eq!(bare.status, RowStatus::Ok);
    assert!(
        report.pass_target().is_none(),
        "no target verdict from a failed row"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("**FAILED**"));
}

#[test]
fn bad_options_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    for (args, message) in [
        (
            vec!["--workloads", "pass,nope"],
            "unknown workload \"nope\"",
        ),
        (vec!["--backends", "kakoi"], "--backends must include bare"),
        (
            vec!["--backends", "bare,podman"],
            "unknown backend \"podman\"",
        ),
        (vec!["--runs", "0"], "--runs must be at least 1"),
        (
            vec!["--concurrency", "0"],
            "--concurrency levels must be at least 1",
        ),
        (vec!["--import", "os; import x"], "is not a module name"),
        (
            vec!["--python", "/nonexistent/python"],
            "/nonexistent/python does not exist",
        ),
        (
            vec!["--replot", "/nonexistent/bench.json"],
            "cannot read /nonexistent/bench.json",
        ),
    ] {
        let mut all = args.clone();
        all.extend(["--out", out_dir.to_str().unwrap()]);
        let out = kakoi_bench(&all);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!out_dir.exists(), "{args:?} wrote results");
    }
}
