//! The syscall probe (after bubblewrap's tests/try-syscall.c): `try_syscall` runs inside the
//! sandbox under the default policy and calls every syscall number 0..=MAX with harmless
//! arguments. The observed class of every number is compared with the checked-in
//! `seccomp/<arch>/default.probe.txt`, so a policy change (or a kernel that treats a number
//! differently) shows up in review as a diff of that file, and with the policy's own lists.
//!
//! Regenerate the file after an intended policy change with
//!
//! ```text
//! KAKOI_REGENERATE_PROBE=1 cargo test --test escape_syscalls
//! ```
//!
//! How a refusal by the filter is told from the kernel's own answer: the probe runs under a
//! copy of the default policy whose refusal errnos are replaced by unused numbers (EPERM →
//! 3333, ENOSYS → 3334), passed with `--seccomp`. A call that comes back with 3333 was refused
//! by the allowlist, 3334 answered ENOSYS by the policy, anything else reached the kernel. A
//! second run under the real built-in policy checks that those refusals are EPERM and ENOSYS.
//! Reported syscalls end the whole sandbox at the first call, so the bulk probe skips them and
//! `every_reported_syscall_kills_and_is_named` runs each of them in a sandbox of its own.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use common::attack::{self, TRY_SYSCALL};
use kakoi::Status;
use kakoi::sandbox::seccomp::{
    allowed_syscalls, enosys_syscalls, reported_syscalls, syscall_name, syscall_number,
};

/// Highest syscall number probed. Native numbers stay below 512 on x86_64 (512+ are the x32
/// compat numbers) and aarch64; the margin above the newest known syscall catches additions.
const MAX_NR: i64 = 511;
/// Refusal errno of the probe's copy of the policy (instead of EPERM). ENOSYS is kept as is:
/// glibc falls back from clone3 to clone only on ENOSYS (posix_spawn in the sandbox init uses
/// it), so the policy's ENOSYS answers are told from the kernel's by the policy's own list.
const CANARY_EPERM: i32 = 3333;

/// Syscall numbers seccomp does not filter at all: since Linux 6.11 (uretprobe, 335) and 6.16
/// (uprobe, 336) x86_64 runs them before the filter, because only the uprobe trampoline may
/// call them (from anywhere else they raise SIGILL / return ENXIO). They show as allowed
/// whatever the policy says.
#[cfg(target_arch = "x86_64")]
const KERNEL_EXEMPT: &[i64] = &[335, 336];
#[cfg(not(target_arch = "x86_64"))]
const KERNEL_EXEMPT: &[i64] = &[];

fn probe_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("seccomp")
        .join(std::env::consts::ARCH)
        .join("default.probe.txt")
}

fn policy_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("seccomp")
        .join(std::env::consts::ARCH)
        .join("default.json")
}

/// The default policy with its EPERM refusals replaced by the canary. Works on any filter
/// layout: every action object `{"errno": 1}` is rewritten.
fn canary_policy(dir: &std::path::Path) -> PathBuf {
    fn rewrite(v: &mut serde_json::Value, counts: &mut [usize; 1]) {
        match v {
            serde_json::Value::Object(map) => {
                if map.len() == 1
                    && let Some(n) = map.get("errno").and_then(serde_json::Value::as_i64)
                {
                    if n == 1 {
                        map.insert("errno".into(), CANARY_EPERM.into());
                        counts[0] += 1;
                    }
                    return;
                }
                for value in map.values_mut() {
                    rewrite(value, counts);
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    rewrite(item, counts);
                }
            }
            _ => {}
        }
    }
    let text = std::fs::read_to_string(policy_file()).unwrap();
    let mut policy: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut counts = [0];
    rewrite(&mut policy, &mut counts);
    assert!(
        counts[0] >= 1,
        "no {{\"errno\": 1}} action in {} (the policy layout changed: update canary_policy)",
        policy_file().display()
    );
    let path = dir.join("canary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&policy).unwrap()).unwrap();
    path
}

/// What one number did.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ret(i64),
    Errno(i32),
    Died(i32),
    Exited(i32),
    Skipped,
}

fn parse_probe(stdout: &str) -> BTreeMap<i64, Outcome> {
    let mut out = BTreeMap::new();
    for line in stdout.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let nr: i64 = parts[0]
            .parse()
            .unwrap_or_else(|_| panic!("bad line {line:?}"));
        let value = |i: usize| parts[i].parse::<i64>().unwrap();
        let outcome = match parts.get(1).copied() {
            Some("ret") => Outcome::Ret(value(2)),
            Some("errno") => Outcome::Errno(value(2) as i32),
            Some("died") => Outcome::Died(value(2) as i32),
            Some("exited") => Outcome::Exited(value(2) as i32),
            Some("skipped") => Outcome::Skipped,
            _ => panic!("bad probe line {line:?}"),
        };
        out.insert(nr, outcome);
    }
    assert_eq!(
        out.len() as i64,
        MAX_NR + 1,
        "the probe did not cover every number:\n{stdout}"
    );
    out
}

fn name_of(nr: i64) -> String {
    syscall_name(nr).map_or_else(|| format!("nr_{nr}"), str::to_owned)
}

fn skipped_numbers() -> String {
    reported_syscalls()
        .iter()
        .map(|n| syscall_number(n).unwrap().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn run_probe(name: &str, flags: &[&str]) -> BTreeMap<i64, Outcome> {
    let max = MAX_NR.to_string();
    let skip = skipped_numbers();
    let a = attack::run(name, flags, &[TRY_SYSCALL, &max, &skip]);
    a.expect_status(Status::Ok);
    parse_probe(&a.result.stdout)
}

#[test]
fn syscall_probe_matches_the_checked_in_list() {
    if !attack::available() {
        return;
    }
    let dir = common::scratch();
    let canary = canary_policy(dir.path());
    let canary = canary.display().to_string();
    let probed = run_probe("probe (canary policy)", &["--seccomp", &canary]);
    let real = run_probe("probe (built-in policy)", &[]);

    let reported: BTreeSet<&str> = reported_syscalls().into_iter().collect();
    let enosys: BTreeSet<&str> = enosys_syscalls().into_iter().collect();
    let mut classes = BTreeMap::new();
    for (&nr, outcome) in &probed {
        let name = name_of(nr);
        let class = match outcome {
            Outcome::Skipped => "reported",
            Outcome::Errno(CANARY_EPERM) => "refused",
            Outcome::Errno(libc::ENOSYS) if enosys.contains(name.as_str()) => "enosys",
            _ if KERNEL_EXEMPT.contains(&nr) => "kernel-exempt",
            _ => "allowed",
        };
        // The built-in policy answers the same refusals with the real errnos.
        match class {
            "refused" => assert_eq!(real[&nr], Outcome::Errno(libc::EPERM), "{name}"),
            "enosys" => assert_eq!(real[&nr], Outcome::Errno(libc::ENOSYS), "{name}"),
            // Let through under the canary policy: the built-in policy must not refuse it
            // (an EPERM there is the kernel's only if the canary run saw the same).
            "allowed" => assert!(
                real[&nr] != Outcome::Errno(libc::EPERM) || *outcome == Outcome::Errno(libc::EPERM),
                "{name}: allowed under the canary policy, EPERM under the built-in one"
            ),
            _ => {}
        }
        if class == "reported" {
            assert!(
                reported.contains(name.as_str()),
                "{name} skipped but not reported"
            );
        }
        classes.insert(nr, (name, class));
    }

    // The observation agrees with what the policy file says.
    let allowed_observed: BTreeSet<&str> = classes
        .values()
        .filter(|(_, c)| *c == "allowed")
        .map(|(n, _)| n.as_str())
        .collect();
    let allowed_policy: BTreeSet<&str> = allowed_syscalls()
        .into_iter()
        .filter(|n| syscall_number(n).is_some_and(|nr| nr <= MAX_NR))
        .collect();
    assert!(
        allowed_observed == allowed_policy,
        "the kernel lets through a different set than seccomp/{}/default.allowed.txt says: \
         let through but not listed {:?}; listed but refused {:?}",
        std::env::consts::ARCH,
        allowed_observed
            .difference(&allowed_policy)
            .collect::<Vec<_>>(),
        allowed_policy
            .difference(&allowed_observed)
            .collect::<Vec<_>>()
    );
    let reported_observed: BTreeSet<&str> = classes
        .values()
        .filter(|(_, c)| *c == "reported")
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(reported_observed, reported);

    let mut text = format!(
        "# What the default {arch} policy does with every syscall number 0..={MAX_NR}, observed\n\
         # from inside the sandbox by tests/fixtures/escape/try_syscall.c (tests/escape_syscalls.rs).\n\
         #   allowed        the call reached the kernel\n\
         #   refused        the allowlist answered EPERM\n\
         #   enosys         the policy answered ENOSYS (libc falls back)\n\
         #   reported       the run is killed and reported as seccomp_violation (probed one per run)\n\
         #   kernel-exempt  seccomp never sees it (uprobe trampoline syscalls, Linux 6.11+)\n\
         # Argument-restricted syscalls (clone, ioctl, personality, socket) are probed with\n\
         # arguments their rules allow; tests/escape.rs tests the rules themselves.\n\
         # Regenerate: KAKOI_REGENERATE_PROBE=1 cargo test --test escape_syscalls\n",
        arch = std::env::consts::ARCH
    );
    for (nr, (name, class)) in &classes {
        text.push_str(&format!("{nr} {name} {class}\n"));
    }
    let path = probe_file();
    if std::env::var_os("KAKOI_REGENERATE_PROBE").is_some() {
        std::fs::write(&path, &text).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; generate it with KAKOI_REGENERATE_PROBE=1 cargo test --test escape_syscalls",
            path.display()
        )
    });
    if expected != text {
        let old: BTreeSet<&str> = expected.lines().filter(|l| !l.starts_with('#')).collect();
        let new: BTreeSet<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        let diff: Vec<String> = old
            .difference(&new)
            .map(|l| format!("- {l}"))
            .chain(new.difference(&old).map(|l| format!("+ {l}")))
            .collect();
        panic!(
            "the observed policy differs from {} (regenerate with KAKOI_REGENERATE_PROBE=1 after \
             an intended change):\n{}",
            path.display(),
            diff.join("\n")
        );
    }
}

/// Every syscall the policy reports, each in a sandbox of its own: the run is killed before
/// the call returns and the result names the syscall.
#[test]
fn every_reported_syscall_kills_and_is_named() {
    if !attack::available() {
        return;
    }
    let mut failures = Vec::new();
    let names = reported_syscalls();
    assert!(names.len() >= 40, "only {} reported syscalls", names.len());
    for name in &names {
        let number = syscall_number(name).unwrap().to_string();
        let a = attack::c(name, &[], &["syscall", &number]);
        let ok = a.result.status == Status::SeccompViolation
            && a.result.seccomp_syscall.as_deref() == Some(*name)
            && a.find("returned").is_none();
        if !ok {
            failures.push(format!("{name}: {}", a.dump()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} reported syscalls misbehaved:\n{}",
        failures.len(),
        names.len(),
        failures.join("\n")
    );
}
