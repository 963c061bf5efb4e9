//! Embedding kakoi as a library: create a [`Sandbox`] once, run any number of [`RunSpec`]s.
//!
//! ```text
//! cargo run --example embed                    # run python3 -c ... and print the JSON result
//! cargo run --example embed -- --leak-check N  # N runs in-process; prints fd counts before/after
//! cargo run --example embed -- --cancel-after MS # `sleep 30`, cancelled from outside after MS ms
//! cargo run --example embed -- --serve [OPTIONS]  # a warm launcher: one run per stdin line
//! ```
//!
//! Run it as root (or where the kernel allows unprivileged user namespaces; see
//! `kakoi doctor`). [`Sandbox::run`] clones, so it must be called from a single-threaded
//! process: a program's main thread before it starts any other thread, like here. A
//! multi-threaded server spawns a launcher process per run instead.

use std::process::ExitCode;

use kakoi::sandbox::RunOptions;
use kakoi::spec::Limits;
use kakoi::{RunResult, RunSpec, Sandbox, SandboxConfig, Status};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.as_slice() {
        [] => run_once(),
        [flag, n] if flag == "--leak-check" => match n.parse() {
            Ok(n) => leak_check(n),
            Err(_) => Err(format!("--leak-check takes a number, not {n:?}").into()),
        },
        [flag, ms] if flag == "--cancel-after" => match ms.parse() {
            Ok(ms) => cancel_after(ms),
            Err(_) => Err(format!("--cancel-after takes milliseconds, not {ms:?}").into()),
        },
        [flag, opts @ ..] if flag == "--serve" => serve(opts),
        _ => Err(
            "usage: embed [--leak-check N | --cancel-after MS | --serve [--no-cgroup] \
             [--prewarm] [--no-seccomp] [--no-landlock]]"
                .into(),
        ),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Print the error and its causes, one per line.
            eprintln!("embed: error: {err}");
            let mut source = err.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error>;

/// The request: a small Python program under tighter limits than the defaults.
fn spec() -> RunSpec {
    RunSpec {
        limits: Limits {
            timeout: Some(5.0),
            memory: Some(128 << 20),
            ..Limits::default()
        },
        env: vec![("FACTOR".into(), "7".into())],
        ..RunSpec::command([
            "python3",
            "-c",
            "import os; print(6 * int(os.environ['FACTOR']))",
        ])
    }
}

/// One run; the whole result (the same contract as `kakoi exec --json`) goes to stdout.
fn run_once() -> Result<(), BoxError> {
    // Detects cgroups once, sweeps state left by dead launchers, creates /run/kakoi.
    let sandbox = Sandbox::new(SandboxConfig::default())?;
    let result: RunResult = sandbox.run(&spec())?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// `n` runs in this process, then a JSON summary: open fds before and after (they must be
/// equal) and sandbox processes left (must be 0).
fn leak_check(n: usize) -> Result<(), BoxError> {
    let sandbox = Sandbox::new(SandboxConfig::default())?;
    // Warm up once so lazily opened host state is not counted as a leak.
    let first = sandbox.run(&spec())?;
    let host_uid = first.isolation.host_uid;
    let fds_before = open_fds()?;
    let mut ok = 0;
    for _ in 0..n {
        if sandbox.run(&spec())?.status == Status::Ok {
            ok += 1;
        }
    }
    let fds_after = open_fds()?;
    let summary = serde_json::json!({
        "runs": n,
        "ok": ok,
        "fds_before": fds_before,
        "fds_after": fds_after,
        "host_uid": host_uid,
        "children_left": processes_with_uid(host_uid),
    });
    println!("{summary}");
    Ok(())
}

/// Cancel a long run from outside: `RunOptions::cancel` takes any fd that becomes readable
/// (here a timerfd firing after `ms`; a server would use a pipe or an eventfd it writes when
/// the client goes away). Prints the result: status `cancelled`, every process gone.
fn cancel_after(ms: u64) -> Result<(), BoxError> {
    use nix::sys::time::TimeSpec;
    use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
    use std::os::fd::{AsFd, AsRawFd};

    let sandbox = Sandbox::new(SandboxConfig::default())?;
    let timer = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_CLOEXEC)?;
    let delay = std::time::Duration::from_millis(ms);
    timer.set(
        Expiration::OneShot(TimeSpec::from_duration(delay)),
        TimerSetTimeFlags::empty(),
    )?;
    let options = RunOptions {
        cancel: Some(timer.as_fd().as_raw_fd()),
        ..RunOptions::default()
    };
    let result = sandbox.run_with(&RunSpec::command(["sleep", "30"]), options)?;
    let summary = serde_json::json!({
        "status": result.status,
        "wall_ms": result.wall_ms,
        "host_uid": result.isolation.host_uid,
        "children_left": processes_with_uid(result.isolation.host_uid),
    });
    println!("{summary}");
    Ok(())
}

/// A warm launcher, as a server's single-threaded launcher process would be: one `Sandbox`,
/// one run per line of stdin (a JSON array: the argv; or `{"argv": [...], "limits": {...}}`),
/// one line of output per run (the status, output, timings and cgroup facts). `benches/compare.py` times the round trip (`kakoi-warm`).
///
/// Options: `--no-cgroup`, `--prewarm` (`SandboxConfig::prewarm`), `--no-seccomp` and
/// `--no-landlock` (to measure what those layers cost on the launch path).
fn serve(opts: &[String]) -> Result<(), BoxError> {
    use std::io::{BufRead, Write};
    let mut config = SandboxConfig::default();
    for opt in opts {
        match opt.as_str() {
            "--no-cgroup" => config.cgroups = kakoi::sandbox::CgroupMode::Off,
            "--prewarm" => config.prewarm = true,
            "--no-seccomp" => config.seccomp = kakoi::sandbox::SeccompSetting::Disabled,
            "--no-landlock" => config.landlock = None,
            other => return Err(format!("--serve: unknown option {other:?}").into()),
        }
    }
    let sandbox = Sandbox::new(config)?;
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        // Either an argv array, or {"argv": [...], "limits": {...}}.
        let request: serde_json::Value = serde_json::from_str(&line?)?;
        let (argv, limits) = match request {
            serde_json::Value::Array(_) => (request, serde_json::Value::Null),
            mut object => (object["argv"].take(), object["limits"].take()),
        };
        let argv: Vec<String> = serde_json::from_value(argv)?;
        let mut spec = RunSpec::command(argv);
        if !limits.is_null() {
            spec.limits = serde_json::from_value(limits)?;
        }
        let result = sandbox.run(&spec)?;
        let reply = serde_json::json!({
            "status": result.status,
            "exit_code": result.exit_code,
            "stdout": result.stdout,
            "stderr": result.stderr,
            "timings": result.timings,
            "cgroup": result.isolation.cgroup,
            "peak_memory_bytes": result.peak_memory_bytes,
            "oom_killed": result.oom_killed,
        });
        writeln!(stdout, "{reply}")?;
        stdout.flush()?;
    }
    Ok(())
}

/// Number of entries in /proc/self/fd (minus the one read_dir itself holds).
fn open_fds() -> std::io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count() - 1)
}

/// Host processes whose real uid is `uid` (the sandbox user's host id).
fn processes_with_uid(uid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u32>().ok())
                == Some(uid)
        })
        .count()
}
