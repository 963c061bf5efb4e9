//! The side-by-side comparison harness behind `kakoi bench`.
//!
//! One set of workloads ([`WORKLOADS`]) runs through several backends — bare python, the
//! `kakoi` CLI, bubblewrap and kakoi's Docker mode — each run a fresh process started from
//! here, timed from spawn to exit as a caller sees it. The backends are interleaved
//! round-robin inside every iteration ([`interleaved_order`]), so load drift on a shared
//! machine hits them all alike and the ratios to bare python stay meaningful.
//!
//! Every run is checked (exit status 0 and the exact expected stdout): a run that fails is
//! never a sample, and a series with a failure is reported as failed, so a broken backend
//! cannot show up as a fast one. The CLI (`src/cli/bench.rs`) builds the [`Job`]s; this
//! module runs and checks them ([`measure`], [`throughput`]), and [`report`] renders the
//! table, the JSON and the SVG plot.

pub mod report;
pub mod stats;

use std::ffi::OsString;
use std::io::Read as _;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// One workload: a Python program and the exact stdout a correct run prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// Short name (`pass`, `hello`, `numpy`, `cpu`, `alloc`).
    pub name: &'static str,
    /// What it does, for tables.
    pub title: &'static str,
    /// Python source, passed with `-c` (or as main.py where a backend needs a file).
    pub code: &'static str,
    /// The stdout of a correct run.
    pub expect: &'static str,
    /// It imports a module from an environment built by the env store.
    pub needs_env: bool,
}

/// The workload set, in table order. The env workload's module is `numpy` by default; the
/// CLI substitutes `--import` (see [`env_workload_code`]).
pub const WORKLOADS: [Workload; 5] = [
    Workload {
        name: "pass",
        title: "python -c pass",
        code: "pass",
        expect: "",
        needs_env: false,
    },
    Workload {
        name: "hello",
        title: "print(\"hello\")",
        code: "print(\"hello\")",
        expect: "hello\n",
        needs_env: false,
    },
    Workload {
        name: "numpy",
        title: "import numpy (env)",
        code: "import numpy\nprint(\"ok\")",
        expect: "ok\n",
        needs_env: true,
    },
    Workload {
        name: "cpu",
        title: "1 s CPU loop",
        code: "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0:\n    pass\nprint(\"ok\")",
        expect: "ok\n",
        needs_env: false,
    },
    Workload {
        name: "alloc",
        title: "100 MB allocation",
        // bytes * n writes every page (a bytearray could stay untouched zero pages).
        code: "b = b\"x\" * (100 * 1024 * 1024)\nprint(len(b))",
        expect: "104857600\n",
        needs_env: false,
    },
];

/// Run once through every backend before measuring: its output must be computed by Python,
/// so a stub that exits 0 without running anything (and would pass `pass`) fails it.
pub const PREFLIGHT: Workload = Workload {
    name: "preflight",
    title: "preflight",
    code: "print(\"kakoi-bench-\" + str(6 * 7))",
    expect: "kakoi-bench-42\n",
    needs_env: false,
};

/// Look a workload up by name.
pub fn workload(name: &str) -> Option<&'static Workload> {
    WORKLOADS.iter().find(|w| w.name == name)
}

/// The env workload's program for another module than numpy.
pub fn env_workload_code(module: &str) -> String {
    format!("import {module}\nprint(\"ok\")")
}

/// One command the harness times, and what a correct run prints.
#[derive(Debug, Clone)]
pub struct Job {
    /// Backend label (`bare`, `kakoi`, `bwrap`, `docker`).
    pub backend: String,
    /// Workload name.
    pub workload: String,
    /// Program and arguments.
    pub argv: Vec<OsString>,
    /// Variables added to the harness's environment.
    pub env: Vec<(String, String)>,
    /// The exact stdout of a correct run.
    pub expect_stdout: Vec<u8>,
}

impl Job {
    /// The command line, for the report (lossy for non-UTF-8 arguments).
    pub fn command_line(&self) -> Vec<String> {
        self.argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }
}

/// One timed run.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Spawn to exit, milliseconds.
    pub ms: f64,
    /// Why the run does not count (spawn failure, exit status, wrong output).
    pub error: Option<String>,
}

/// Run a job once: spawn, collect stdout and stderr, wait, and check the result.
pub fn run_job(job: &Job) -> Outcome {
    let Some((program, args)) = job.argv.split_first() else {
        return Outcome {
            ms: 0.0,
            error: Some("empty command".into()),
        };
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let output = cmd.output();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let error = match output {
        Err(e) => Some(format!("cannot start {}: {e}", program.to_string_lossy())),
        Ok(out) => check_output(&out.status, &out.stdout, &out.stderr, &job.expect_stdout),
    };
    Outcome { ms, error }
}

/// Why an exit status and output are not a correct run, if they are not.
pub fn check_output(
    status: &std::process::ExitStatus,
    stdout: &[u8],
    stderr: &[u8],
    expect: &[u8],
) -> Option<String> {
    let tail = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        let s = s.trim_end();
        let start = s.len().saturating_sub(400);
        let start = (start..=s.len())
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(s.len());
        s[start..].to_string()
    };
    if !status.success() {
        return Some(format!("{status}; stderr: {}", tail(stderr)));
    }
    if stdout != expect {
        return Some(format!(
            "unexpected stdout {:?} (expected {:?}); stderr: {}",
            tail(stdout),
            String::from_utf8_lossy(expect),
            tail(stderr)
        ));
    }
    None
}

/// The order of `jobs` jobs in each of `iterations` iterations: every job once per
/// iteration, the starting job rotating by one each time, so no job always runs right
/// after the same other one.
pub fn interleaved_order(iterations: usize, jobs: usize) -> Vec<Vec<usize>> {
    (0..iterations)
        .map(|i| (0..jobs).map(|k| (i + k) % jobs).collect())
        .collect()
}

/// The measured series of one job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// The first run of the job in this process (before the warm-up), milliseconds.
    pub first_ms: Option<f64>,
    /// The timed runs that passed the check, milliseconds.
    pub samples_ms: Vec<f64>,
    /// Runs that failed the check (first run, warm-up and timed).
    pub failures: usize,
    /// The first failure's description.
    pub error: Option<String>,
}

impl Series {
    fn record(&mut self, outcome: Outcome, phase: Phase) {
        match outcome.error {
            Some(e) => {
                self.failures += 1;
                self.error.get_or_insert(e);
            }
            None => match phase {
                Phase::First => self.first_ms = Some(outcome.ms),
                Phase::Warmup => {}
                Phase::Timed => self.samples_ms.push(outcome.ms),
            },
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    First,
    Warmup,
    Timed,
}

/// Run every job once (its first run: it must pass, or the job is dropped from the rest),
/// then `warmup` untimed and `runs` timed interleaved iterations. `progress` gets the
/// number of finished iterations and the total.
pub fn measure(
    jobs: &[Job],
    runs: usize,
    warmup: usize,
    mut progress: impl FnMut(usize, usize),
) -> Vec<Series> {
    let mut series = vec![Series::default(); jobs.len()];
    for (job, s) in jobs.iter().zip(&mut series) {
        s.record(run_job(job), Phase::First);
    }
    let live: Vec<usize> = (0..jobs.len())
        .filter(|&i| series[i].failures == 0)
        .collect();
    let total = warmup + runs;
    for (it, order) in interleaved_order(total, live.len()).into_iter().enumerate() {
        let phase = if it < warmup {
            Phase::Warmup
        } else {
            Phase::Timed
        };
        for k in order {
            let i = live[k];
            series[i].record(run_job(&jobs[i]), phase);
        }
        progress(it + 1, total);
    }
    series
}

/// Throughput of one job at a given parallelism.
#[derive(Debug, Clone, PartialEq)]
pub struct Throughput {
    /// Runs started (and finished).
    pub runs: usize,
    /// Runs that failed the check.
    pub failures: usize,
    /// The first failure's description.
    pub error: Option<String>,
    /// Wall time of the whole batch, seconds.
    pub seconds: f64,
}

impl Throughput {
    /// Checked runs per second (`None` if any run failed).
    pub fn runs_per_second(&self) -> Option<f64> {
        (self.failures == 0 && self.seconds > 0.0).then(|| self.runs as f64 / self.seconds)
    }
}

/// Run `total` runs of `job` on `parallel` threads (each starts its next run as soon as
/// its previous one ends) and time the batch.
pub fn throughput(job: &Job, parallel: usize, total: usize) -> Throughput {
    let next = AtomicUsize::new(0);
    let failures = AtomicUsize::new(0);
    let error = Mutex::new(None::<String>);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..parallel.max(1) {
            scope.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    if let Some(e) = run_job(job).error {
                        failures.fetch_add(1, Ordering::Relaxed);
                        error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                    }
                }
            });
        }
    });
    Throughput {
        runs: total,
        failures: failures.into_inner(),
        error: error.into_inner().unwrap_or_else(|p| p.into_inner()),
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Read `/proc/loadavg`'s three averages.
pub fn loadavg() -> Option<[f64; 3]> {
    let mut text = String::new();
    std::fs::File::open("/proc/loadavg")
        .ok()?
        .read_to_string(&mut text)
        .ok()?;
    let mut it = text.split_whitespace().map(|s| s.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, expect: &str) -> Job {
        Job {
            backend: "sh".into(),
            workload: "t".into(),
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec![],
            expect_stdout: expect.as_bytes().to_vec(),
        }
    }

    #[test]
    fn interleaving_runs_each_job_once_per_iteration_rotating_the_start() {
        let order = interleaved_order(5, 3);
        assert_eq!(order.len(), 5);
        for it in &order {
            let mut sorted = it.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 1, 2]);
        }
        let starts: Vec<usize> = order.iter().map(|o| o[0]).collect();
        assert_eq!(starts, vec![0, 1, 2, 0, 1]);
        assert_eq!(order[1], vec![1, 2, 0]);
        assert!(interleaved_order(3, 0).iter().all(Vec::is_empty));
    }

    #[test]
    fn a_run_is_checked_for_status_and_exact_output() {
        assert_eq!(run_job(&sh("echo hello", "hello\n")).error, None);
        let wrong = run_job(&sh("echo hullo", "hello\n")).error.unwrap();
        assert!(wrong.contains("unexpected stdout"), "{wrong}");
        let failed = run_job(&sh("echo boom >&2; exit 3", "")).error.unwrap();
        assert!(
            failed.contains("exit status: 3") && failed.contains("boom"),
            "{failed}"
        );
        let missing = Job {
            argv: vec!["/nonexistent/kakoi-bench".into()],
            ..sh("", "")
        };
        assert!(run_job(&missing).error.unwrap().contains("cannot start"));
    }

    #[test]
    fn measure_keeps_only_checked_runs_and_drops_a_job_failing_its_first_run() {
        let jobs = [sh("true", ""), sh("exit 1", "")];
        let mut calls = 0;
        let series = measure(&jobs, 3, 1, |done, total| {
            calls += 1;
            assert!(done <= total && total == 4);
        });
        assert_eq!(calls, 4);
        assert_eq!(series[0].samples_ms.len(), 3);
        assert!(series[0].first_ms.is_some() && series[0].failures == 0);
        assert!(series[0].samples_ms.iter().all(|&ms| ms > 0.0));
        assert_eq!(series[1].failures, 1, "run once, then dropped");
        assert!(series[1].samples_ms.is_empty() && series[1].first_ms.is_none());
    }

    #[test]
    fn throughput_counts_every_run_and_failures() {
        let ok = throughput(&sh("true", ""), 4, 10);
        assert_eq!((ok.runs, ok.failures), (10, 0));
        assert!(ok.runs_per_second().unwrap() > 0.0);
        let bad = throughput(&sh("exit 2", ""), 2, 3);
        assert_eq!(bad.failures, 3);
        assert!(bad.runs_per_second().is_none() && bad.error.is_some());
    }

    #[test]
    fn workloads_are_named_uniquely() {
        for w in &WORKLOADS {
            assert_eq!(workload(w.name), Some(w));
        }
        assert!(workload("nope").is_none());
        assert_eq!(env_workload_code("six"), "import six\nprint(\"ok\")");
    }
}
