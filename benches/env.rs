//! What a cached environment adds to a run (criterion).
//!
//! - `env/lookup_cached`: everything `kakoi run -r` does for an env that already exists:
//!   open the store, normalize the requirements, locate the toolchain (stat of uv/ruff, the
//!   cached interpreter probe), compute the digest, take the shared "in use" flock, stamp
//!   the last use, and [`Env::apply`] to a spec; then release it. The target is ≤ 1 ms.
//! - `env/digest_only`: the same without the flock and apply, to show where time goes.
//!
//! The env is built first if missing (needs root and PyPI): `six==1.17.0` in
//! `$KAKOI_BENCH_DATA_DIR` (default `/var/tmp/kakoi-bench-env`). Run with
//! `cargo bench --bench env`.
//!
//! [`Env::apply`]: kakoi::env::Env::apply

use std::path::PathBuf;
use std::time::Duration;

use criterion::Criterion;
use kakoi::RunSpec;
use kakoi::cli::env::LazySandbox;
use kakoi::env::{EnvRequest, EnvStore, NoProgress, ResolveOptions, StoreConfig};
use kakoi::sandbox::SandboxConfig;

const REQUIREMENTS: &[u8] = b"six==1.17.0\n";

fn config() -> StoreConfig {
    let dir = std::env::var_os("KAKOI_BENCH_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/kakoi-bench-env"));
    StoreConfig {
        data_dir: Some(dir),
        ..StoreConfig::default()
    }
}

fn lookup(c: &mut Criterion) {
    // Build (or find) the env once, outside the measurement.
    {
        let store = EnvStore::open(config()).expect("open the store");
        let request = EnvRequest::new(REQUIREMENTS, ResolveOptions::default()).unwrap();
        let backend = LazySandbox::new(EnvStore::build_sandbox_config(SandboxConfig::default()));
        let env = store
            .ensure(&request, &backend, &mut NoProgress)
            .expect("build the bench env");
        eprintln!("bench env {} at {}", env.digest(), env.path().display());
    }
    let backend = LazySandbox::new(EnvStore::build_sandbox_config(SandboxConfig::default()));
    let mut group = c.benchmark_group("env");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("lookup_cached", |b| {
        b.iter(|| {
            let store = EnvStore::open(config()).unwrap();
            let request = EnvRequest::new(REQUIREMENTS, ResolveOptions::default()).unwrap();
            let env = store.ensure(&request, &backend, &mut NoProgress).unwrap();
            assert!(env.cache_hit(), "the bench must measure a cache hit");
            let mut spec = RunSpec::command([env.python()]);
            env.apply(&mut spec);
            spec
        })
    });
    group.bench_function("digest_only", |b| {
        b.iter(|| {
            let store = EnvStore::open(config()).unwrap();
            let request = EnvRequest::new(REQUIREMENTS, ResolveOptions::default()).unwrap();
            store.digest(&request, &mut NoProgress).unwrap()
        })
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    lookup(&mut c);
    c.final_summary();
}
