//! Test helper: run a command under a kakoi Landlock plan (prepared and applied in-process).
//!
//! `landlock_exec [--ro HOST_PATH]... [--ro-sandbox PATH]... [--rw PATH]... [--net-off]
//!  [--best-effort] -- CMD ARGS...`
//!
//! Prints `LANDLOCK <summary json>` to stderr, then execs CMD; exits 125 on setup failure.

use std::ffi::CString;
use std::path::PathBuf;

use kakoi::sandbox::landlock::{LandlockMode, LandlockPlan, LandlockSpec};

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut ro, mut ro_sandbox, mut rw) = (Vec::new(), Vec::new(), Vec::new());
    let (mut network_off, mut mode) = (false, LandlockMode::Strict);
    let mut command = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--ro" => ro.push(PathBuf::from(args.next().expect("--ro PATH"))),
            "--ro-sandbox" => ro_sandbox.push(args.next().expect("--ro-sandbox PATH")),
            "--rw" => rw.push(args.next().expect("--rw PATH")),
            "--net-off" => network_off = true,
            "--best-effort" => mode = LandlockMode::BestEffort,
            "--" => {
                command.extend(args.by_ref());
                break;
            }
            other => {
                eprintln!("landlock_exec: unexpected argument {other}");
                std::process::exit(2);
            }
        }
    }
    let ro_sandbox: Vec<&str> = ro_sandbox.iter().map(String::as_str).collect();
    let rw: Vec<&str> = rw.iter().map(String::as_str).collect();
    let plan = LandlockPlan::prepare_with(&LandlockSpec {
        ro_exec_host_paths: &ro,
        rw_host_paths: &[],
        ro_sandbox_paths: &ro_sandbox,
        rw_sandbox_paths: &rw,
        network_off,
        mode,
    })
    .unwrap_or_else(|e| {
        eprintln!("landlock_exec: {e}");
        std::process::exit(125);
    });
    eprintln!(
        "LANDLOCK {}",
        serde_json::to_string(&plan.summary()).expect("summary serializes")
    );
    let argv: Vec<CString> = command
        .iter()
        .map(|a| CString::new(a.as_str()).expect("no NUL in arguments"))
        .collect();
    // no_new_privs before Landlock: landlock_restrict_self requires it without CAP_SYS_ADMIN.
    nix::sys::prctl::set_no_new_privs().expect("PR_SET_NO_NEW_PRIVS");
    if let Err((stage, errno)) = plan.apply_in_child() {
        eprintln!(
            "landlock_exec: {} failed: {errno}",
            plan.describe_failure(stage)
        );
        std::process::exit(125);
    }
    let error = nix::unistd::execvp(&argv[0], &argv).unwrap_err();
    eprintln!("landlock_exec: exec {}: {error}", command[0]);
    std::process::exit(125);
}
