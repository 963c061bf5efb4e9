//! Policy compiler shared by `build.rs` (the embedded default policy) and
//! `src/sandbox/seccomp.rs` (`--seccomp PATH` at run time), so both accept exactly the same files.
//!
//! A policy file is seccompiler JSON with up to three named filters (see `seccomp/README.md`):
//! `allow` (required), `enosys` and `report`. This module checks the kakoi rules on top of the
//! seccompiler format and returns what the loader (`SeccompPolicy` in `src/sandbox/seccomp.rs`)
//! assembles into the one filter a run installs: the syscall lists, and the allowlist's
//! argument rules compiled by seccompiler.

use std::collections::BTreeSet;

use seccompiler::{BpfProgram, TargetArch};
use serde_json::{Map, Value};

/// One policy, checked and compiled for one architecture.
pub struct CompiledPolicy {
    /// The allowlist's *conditional* rules (those with `args`): ALLOW, default ERRNO. The
    /// loader jumps here from its binary search for these syscalls only, so the kernel walks
    /// O(log n) instructions per syscall (and per syscall number when it prepares its action
    /// cache at install time) instead of a linear chain of every rule.
    pub allow: BpfProgram,
    /// Syscalls the allowlist allows whatever their arguments (routed ones included), sorted.
    pub plain: Vec<String>,
    /// Syscalls the `allow` filter allows (some only with restricted arguments), sorted.
    pub allowed: Vec<String>,
    /// Syscalls that are reported as violations, sorted.
    pub reported: Vec<String>,
    /// Syscalls answered `ENOSYS` (the `enosys` filter), sorted.
    pub enosys_names: Vec<String>,
    /// The errno of the allowlist's `mismatch_action` (what unknown syscalls get).
    pub deny_errno: u32,
    /// The errno of the `enosys` filter's `match_action` (normally `ENOSYS`).
    pub enosys_errno: u32,
}

const FILTERS: [&str; 3] = ["allow", "enosys", "report"];

/// Checks and compiles one policy file's text. Errors are one line, naming the filter, rule or
/// syscall at fault.
pub fn compile_policy(text: &str, arch: TargetArch) -> Result<CompiledPolicy, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(mut filters) = value else {
        return Err("the top level must be an object of named filters".into());
    };
    for name in filters.keys() {
        if !FILTERS.contains(&name.as_str()) {
            return Err(format!(
                "unknown filter `{name}` (expected `allow`, `enosys` or `report`)"
            ));
        }
    }
    let Some(allow) = filters.get("allow") else {
        return Err("missing the `allow` filter".into());
    };
    expect_action(allow, "allow", "match_action", |a| a == "allow")?;
    expect_action(allow, "allow", "mismatch_action", |a| {
        a.get("errno")
            .and_then(Value::as_u64)
            .is_some_and(|e| e < 4096)
    })?;
    let deny_errno = allow["mismatch_action"]["errno"].as_u64().unwrap_or(1) as u32;
    let allowed = syscall_names(allow, "allow", true)?;

    let mut routed = Vec::new();
    let mut reported = BTreeSet::new();
    let mut enosys_names = BTreeSet::new();
    let mut enosys_errno = libc_enosys() as u32;
    if let Some(enosys) = filters.get("enosys") {
        expect_action(enosys, "enosys", "match_action", |a| {
            a.get("errno")
                .and_then(Value::as_u64)
                .is_some_and(|e| e < 4096)
        })?;
        enosys_errno = enosys["match_action"]["errno"]
            .as_u64()
            .map_or(enosys_errno, |e| e as u32);
        expect_action(enosys, "enosys", "mismatch_action", |a| a == "allow")?;
        let names = syscall_names(enosys, "enosys", false)?;
        enosys_names.extend(names.iter().cloned());
        routed.extend(names);
    }
    if let Some(report) = filters.get("report") {
        expect_action(report, "report", "match_action", |a| a == "kill_process")?;
        expect_action(report, "report", "mismatch_action", |a| a == "allow")?;
        let names = syscall_names(report, "report", false)?;
        reported.extend(names.iter().cloned());
        routed.extend(names);
    }
    for name in &routed {
        if allowed.contains(name) {
            return Err(format!(
                "syscall `{name}` is both in `allow` and in `enosys`/`report`; keep it in one"
            ));
        }
    }
    // Route: the strongest action of all filters wins and ERRNO beats USER_NOTIF, so the
    // allowlist must ALLOW what another filter decides, or its EPERM would hide that decision.
    let rules = filters
        .get_mut("allow")
        .and_then(|f| f.get_mut("filter"))
        .and_then(Value::as_array_mut)
        .ok_or("filter `allow`: `filter` must be an array")?;
    for name in &routed {
        rules.push(serde_json::json!({ "syscall": name, "comment": "routed to enosys/report" }));
    }
    // Split the allowlist: syscalls with at least one argument-free rule are allowed outright
    // (the loader dispatches them by binary search); only the rest stay in the compiled filter.
    let allow_rules = filters["allow"]["filter"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let plain: BTreeSet<String> = allow_rules
        .iter()
        .filter(|r| r.get("args").is_none())
        .filter_map(|r| r.get("syscall").and_then(Value::as_str).map(str::to_string))
        .collect();
    let conditional: Vec<Value> = allow_rules
        .into_iter()
        .filter(|r| {
            r.get("syscall")
                .and_then(Value::as_str)
                .is_some_and(|s| !plain.contains(s))
        })
        .collect();
    // Compile the whole allowlist once anyway: seccompiler is what rejects unknown syscall
    // names and malformed argument rules, for the plain ones too.
    {
        let whole = Value::Object(Map::from_iter([(
            "allow".to_string(),
            filters["allow"].clone(),
        )]));
        seccompiler::compile_from_json(whole.to_string().as_bytes(), arch)
            .map_err(|e| format!("filter `allow`: {e}"))?;
    }
    filters["allow"]["filter"] = Value::Array(conditional);

    let compile = |name: &str, filters: &Map<String, Value>| -> Result<BpfProgram, String> {
        let Some(filter) = filters.get(name) else {
            return Ok(Vec::new());
        };
        if filter["filter"].as_array().is_some_and(Vec::is_empty) && name != "allow" {
            return Ok(Vec::new());
        }
        let one = Value::Object(Map::from_iter([(name.to_string(), filter.clone())]));
        let mut map = seccompiler::compile_from_json(one.to_string().as_bytes(), arch)
            .map_err(|e| format!("filter `{name}`: {e}"))?;
        map.remove(name)
            .ok_or_else(|| format!("filter `{name}`: compiler returned no program"))
    };
    let allow_program = compile("allow", &filters)?;
    // The other two only go through seccompiler as a check of their format: the loader uses
    // their syscall lists.
    compile("enosys", &filters)?;
    compile("report", &filters)?;
    Ok(CompiledPolicy {
        allow: allow_program,
        plain: plain.into_iter().collect(),
        allowed: allowed.into_iter().collect(),
        reported: reported.into_iter().collect(),
        enosys_names: enosys_names.into_iter().collect(),
        deny_errno,
        enosys_errno,
    })
}

/// `ENOSYS` (38 on every Linux architecture kakoi supports): what the `enosys` filter answers
/// when a policy has none (a policy may choose another errno, e.g. a test's canary value).
fn libc_enosys() -> u64 {
    38
}

fn expect_action(
    filter: &Value,
    name: &str,
    key: &str,
    ok: impl Fn(&Value) -> bool,
) -> Result<(), String> {
    match filter.get(key) {
        Some(action) if ok(action) => Ok(()),
        Some(action) => Err(format!("filter `{name}`: unexpected {key} {action}")),
        None => Err(format!("filter `{name}`: missing {key}")),
    }
}

/// Names in a filter's rules; every rule needs a non-empty comment saying who needs it.
fn syscall_names(filter: &Value, name: &str, args_ok: bool) -> Result<BTreeSet<String>, String> {
    let rules = filter
        .get("filter")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("filter `{name}`: `filter` must be an array"))?;
    let mut names = BTreeSet::new();
    for (index, rule) in rules.iter().enumerate() {
        let syscall = rule
            .get("syscall")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("filter `{name}`: rule {index} has no `syscall` name"))?;
        let commented = rule
            .get("comment")
            .and_then(Value::as_str)
            .is_some_and(|c| !c.trim().is_empty());
        if !commented {
            return Err(format!(
                "filter `{name}`: rule {index} (`{syscall}`) needs a `comment` saying who needs it"
            ));
        }
        if !args_ok && rule.get("args").is_some() {
            return Err(format!(
                "filter `{name}`: rule {index} (`{syscall}`) may not have `args` (whole syscalls only)"
            ));
        }
        names.insert(syscall.to_string());
    }
    Ok(names)
}
