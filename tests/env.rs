//! Environments end to end, against the real PyPI: build, reuse, run offline, break, race,
//! kill, reproduce.
//!
//! Data directories live under `/var/tmp/kakoi-test-env/` (a data directory may not lie
//! under /tmp or /work: envs are bound into sandboxes at their host path). `shared/` is kept
//! between test runs so numpy and pandas are downloaded and built once per machine; tests
//! that need a store of their own start from a fresh directory into which the shared,
//! already verified uv and ruff binaries are copied.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use kakoi::RunResult;
use kakoi::result::Status;
use serde_json::Value;

use common::{kakoi, parse_result, sandbox_available};

const BASE: &str = "/var/tmp/kakoi-test-env";
const PYTHON: &str = "/usr/bin/python3";

fn base() -> PathBuf {
    let base = PathBuf::from(BASE);
    std::fs::create_dir_all(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    base
}

/// The data directory shared by tests and test runs.
fn shared() -> PathBuf {
    base().join("shared")
}

/// Make sure the shared store has its toolchain (downloads uv and ruff once per machine).
fn shared_toolchain() -> PathBuf {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    READY
        .get_or_init(|| {
            let out = kakoi_env(&shared(), &["toolchain", "--json"]);
            assert!(out.status.success(), "toolchain: {}", text(&out));
            let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
            PathBuf::from(doc["uv"]["path"].as_str().unwrap())
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .to_path_buf()
        })
        .clone()
}

/// A new, empty data directory with the shared toolchain copied in (no uv cache, no envs).
fn fresh(tag: &str) -> tempfile::TempDir {
    let tools = shared_toolchain();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{tag}-"))
        .tempdir_in(base())
        .unwrap();
    let target = dir
        .path()
        .join("toolchain")
        .join(tools.file_name().unwrap());
    std::fs::create_dir_all(target.join("bin")).unwrap();
    for name in ["bin/uv", "bin/ruff", "manifest.json"] {
        std::fs::copy(tools.join(name), target.join(name)).unwrap();
    }
    dir
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `kakoi env <args> --data-dir <data>`.
fn kakoi_env(data: &Path, args: &[&str]) -> Output {
    let mut cmd = kakoi();
    cmd.arg("env").args(args).arg("--data-dir").arg(data);
    cmd.output().expect("spawn kakoi")
}

/// `kakoi run --json -r <req> --data-dir <data> <flags> <main>`.
fn run_json(data: &Path, requirements: &Path, flags: &[&str], main: &Path) -> (RunResult, Output) {
    let mut cmd = kakoi();
    cmd.args(["run", "--json", "-r"])
        .arg(requirements)
        .arg("--data-dir")
        .arg(data)
        .args(flags)
        .arg(main);
    let out = cmd.output().expect("spawn kakoi");
    (parse_result(&out), out)
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

/// A scratch directory for inputs (requirements files, programs).
fn inputs() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Digest directories of a store.
fn env_dirs(data: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(data.join("envs/v1"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn staging_entries(data: &Path) -> usize {
    std::fs::read_dir(data.join("envs/v1/.staging"))
        .map(|d| d.count())
        .unwrap_or(0)
}

const NUMPY_PANDAS: &str = "numpy\npandas\nsix\nattrs\n";

/// The shared numpy + pandas + six + attrs env (built once per machine; concurrent callers
/// wait on the store's lock).
fn numpy_env() -> (PathBuf, PathBuf) {
    static REQ: OnceLock<PathBuf> = OnceLock::new();
    let req = REQ
        .get_or_init(|| {
            let path = base().join("numpy-pandas.txt");
            std::fs::write(&path, NUMPY_PANDAS).unwrap();
            path
        })
        .clone();
    let out = kakoi_env(
        &shared(),
        &["build", "--json", "--quiet", "-r", req.to_str().unwrap()],
    );
    assert!(out.status.success(), "numpy env: {}", text(&out));
    (shared(), req)
}

#[test]
fn numpy_pandas_six_attrs_import_offline_from_a_read_only_env() {
    if !sandbox_available() {
        return;
    }
    let (data, req) = numpy_env();
    let dir = inputs();
    let main = write(
        dir.path(),
        "main.py",
        r#"
import os, sys, json
import six, attr, numpy, pandas
df = pandas.DataFrame({"x": numpy.arange(5)})
site = os.path.dirname(six.__file__)
try:
    open(os.path.join(site, "kakoi-probe.txt"), "w")
    writable = True
except OSError as e:
    writable = e.strerror
print(json.dumps({
    "sum": int(df.x.sum()),
    "numpy": numpy.__version__,
    "prefix": sys.prefix,
    "env_writable": writable,
    "omp": os.environ.get("OMP_NUM_THREADS"),
    "openblas": os.environ.get("OPENBLAS_NUM_THREADS"),
}))
"#,
    );
    let (result, out) = run_json(&data, &req, &["--cpus", "2", "--memory", "1G"], &main);
    assert_eq!(result.status, Status::Ok, "{}", text(&out));
    let env = result.env.as_ref().expect("result.env");
    assert!(env.cache_hit, "the env was built before this run");
    assert_eq!(env.build_ms, 0.0);
    assert_eq!(env.digest.len(), 32);
    assert!(result.timings.env_ms > 0.0);
    assert_eq!(result.isolation.network, "none");
    assert!(result.isolation.namespaces.iter().any(|n| n == "net"));
    let doc: Value = serde_json::from_str(result.stdout.trim()).unwrap();
    assert_eq!(doc["sum"], 10);
    assert!(
        doc["prefix"]
            .as_str()
            .unwrap()
            .ends_with(&format!("{}/venv", env.digest))
    );
    assert_ne!(
        doc["env_writable"], true,
        "the env must be read-only in the sandbox"
    );
    assert_eq!(doc["omp"], "2", "thread pools follow --cpus");
    assert_eq!(doc["openblas"], "2");
}

#[test]
fn imports_use_the_precompiled_bytecode() {
    if !sandbox_available() {
        return;
    }
    let (data, req) = numpy_env();
    let dir = inputs();
    // Count every module the import system compiles from source (a missing or stale .pyc);
    // the env is read-only, so such a module would be compiled again on every run.
    let main = write(
        dir.path(),
        "main.py",
        r#"
import importlib._bootstrap_external as be, json, sys, time
compiled = []
original = be.SourceLoader.source_to_code
def counting(self, data, path, *args, **kwargs):
    compiled.append(path)
    return original(self, data, path, *args, **kwargs)
be.SourceLoader.source_to_code = counting
start = time.perf_counter()
import numpy, pandas
elapsed = time.perf_counter() - start
in_env = [p for p in compiled if p.startswith(sys.prefix)]
modules = [m for m in sys.modules.values() if getattr(m, "__file__", None) and m.__file__.startswith(sys.prefix)]
print(json.dumps({"compiled": in_env, "modules": len(modules), "import_s": elapsed}))
"#,
    );
    let (result, out) = run_json(&data, &req, &["--memory", "1G"], &main);
    assert_eq!(result.status, Status::Ok, "{}", text(&out));
    let doc: Value = serde_json::from_str(result.stdout.trim()).unwrap();
    assert!(
        doc["modules"].as_u64().unwrap() > 100,
        "numpy and pandas load many modules from the env: {doc}"
    );
    assert_eq!(
        doc["compiled"].as_array().unwrap().len(),
        0,
        "modules compiled at run time: {doc}"
    );
    // A figure for the log, not a target (timed assertions are flaky on shared machines).
    eprintln!(
        "import numpy, pandas inside the sandbox: {:.0} ms ({} modules from the env)",
        doc["import_s"].as_f64().unwrap() * 1000.0,
        doc["modules"]
    );
}

/// Replace the store's uv with a program that fails loudly if anything runs it.
fn poison_uv(data: &Path) {
    let toolchain = data.join("toolchain");
    for entry in std::fs::read_dir(&toolchain).unwrap().flatten() {
        let uv = entry.path().join("bin/uv");
        if uv.is_file() {
            std::fs::remove_file(&uv).unwrap();
            std::fs::write(&uv, "#!/bin/sh\necho 'poisoned uv ran' >&2\nexit 97\n").unwrap();
            std::fs::set_permissions(&uv, std::fs::Permissions::from_mode(0o755)).unwrap();
            return;
        }
    }
    panic!("no uv under {}", toolchain.display());
}

#[test]
fn a_cache_hit_runs_no_uv_and_needs_no_network() {
    if !sandbox_available() {
        return;
    }
    let data = fresh("cachehit");
    let dir = inputs();
    let req = write(dir.path(), "requirements.txt", "six==1.17.0\n");
    let main = write(
        dir.path(),
        "main.py",
        "import six; print(six.__version__)\n",
    );
    let (first, out) = run_json(data.path(), &req, &[], &main);
    assert_eq!(first.status, Status::Ok, "{}", text(&out));
    let first_env = first.env.clone().unwrap();
    assert!(!first_env.cache_hit);
    assert!(first_env.build_ms > 0.0);
    assert_eq!(first.stdout, "1.17.0\n");

    // From now on running uv fails, and the launcher itself has no network at all.
    poison_uv(data.path());
    let out = Command::new("unshare")
        .args(["--net", "--"])
        .arg(env!("CARGO_BIN_EXE_kakoi"))
        .args(["run", "--json", "-r"])
        .arg(&req)
        .arg("--data-dir")
        .arg(data.path())
        .arg(&main)
        .stdin(Stdio::null())
        .output()
        .expect("spawn unshare");
    let second = parse_result(&out);
    assert_eq!(second.status, Status::Ok, "{}", text(&out));
    assert_eq!(second.stdout, "1.17.0\n");
    let env = second.env.unwrap();
    assert!(env.cache_hit);
    assert_eq!(env.build_ms, 0.0);
    assert_eq!(env.digest, first_env.digest);

    // The poisoned uv is really what a build would run: a new digest fails with its message.
    let other = write(dir.path(), "other.txt", "attrs==24.2.0\n");
    let (third, out) = run_json(data.path(), &other, &[], &main);
    assert_eq!(third.status, Status::EnvError, "{}", text(&out));
    assert!(third.error.unwrap().message.contains("poisoned uv ran"));
}

#[test]
fn build_list_in_use_rm_and_gc() {
    if !sandbox_available() {
        return;
    }
    let data = fresh("lifecycle");
    let dir = inputs();
    let req = write(
        dir.path(),
        "requirements.txt",
        "# two small packages\nsix\nattrs==24.2.0\n",
    );

    // Plain progress lines on a non-terminal stderr.
    let out = kakoi_env(data.path(), &["build", "-r", req.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("kakoi: resolving 2 requirements"),
        "{stderr}"
    );
    assert!(
        stderr.contains("+ six=="),
        "uv's install lines stream through: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("built in"), "{stdout}");

    // The same requirements in another order and spelling: same digest, nothing built, and
    // --quiet prints nothing on stderr.
    let same = write(dir.path(), "same.txt", "attrs==24.2.0\n\n  six  # again\n");
    let out = kakoi_env(
        data.path(),
        &["build", "--json", "--quiet", "-r", same.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stderr.is_empty(), "{}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["status"], "ok");
    assert_eq!(doc["env"]["cache_hit"], true);
    let digest = doc["env"]["digest"].as_str().unwrap().to_string();
    assert_eq!(env_dirs(data.path()), vec![digest.clone()]);
    let env_path = data.path().join("envs/v1").join(&digest);
    let lock = std::fs::read_to_string(env_path.join("requirements.lock")).unwrap();
    assert!(
        lock.contains("six==") && lock.contains("--hash=sha256:"),
        "{lock}"
    );
    assert_eq!(
        std::fs::read_to_string(env_path.join("requirements.in")).unwrap(),
        "attrs==24.2.0\nsix\n"
    );
    // Owned by the store's owner, not writable by others.
    let meta = std::fs::metadata(env_path.join("venv/bin/python").parent().unwrap()).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
    assert_eq!(meta.permissions().mode() & 0o022, 0);

    let out = kakoi_env(data.path(), &["list", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let envs = list["envs"].as_array().unwrap();
    assert_eq!(envs.len(), 1);
    assert_eq!(envs[0]["digest"], digest.as_str());
    assert_eq!(envs[0]["in_use"], false);
    assert!(
        list["toolchain"]["identity"]
            .as_str()
            .unwrap()
            .contains("uv=0.13.9")
    );

    // Hold the env in use exactly as a run does: a shared flock on its lock file.
    let lock_file =
        std::fs::File::open(data.path().join(format!("envs/v1/.locks/{digest}.lock"))).unwrap();
    let held = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockShared).unwrap();
    let out = kakoi_env(data.path(), &["list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["envs"][0]["in_use"], true);
    let out = kakoi_env(data.path(), &["rm", &digest[..8]]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        text(&out)
    );
    let out = kakoi_env(data.path(), &["gc", "--older-than", "0s", "--json"]);
    let gc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(gc["kept_in_use"][0], digest.as_str(), "{gc}");
    assert_eq!(env_dirs(data.path()), vec![digest.clone()]);
    drop(held);

    // A dry run removes nothing; a size cap of 0 removes the env.
    let out = kakoi_env(
        data.path(),
        &["gc", "--max-size", "0", "--dry-run", "--json"],
    );
    let gc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(gc["removed"][0], digest.as_str());
    assert_eq!(env_dirs(data.path()), vec![digest.clone()]);
    let out = kakoi_env(data.path(), &["gc", "--older-than", "1h"]);
    assert!(out.status.success());
    assert_eq!(
        env_dirs(data.path()),
        vec![digest.clone()],
        "recently used env kept"
    );
    let out = kakoi_env(data.path(), &["rm", &digest[..8]]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(env_dirs(data.path()).is_empty());
    let out = kakoi_env(data.path(), &["rm", &digest[..8]]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no environment"));
    // The uv cache can be emptied too (envs hold copies, they never need it).
    assert!(data.path().join("uv-cache").is_dir());
    let out = kakoi_env(data.path(), &["gc", "--uv-cache", "--json"]);
    let gc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(gc["uv_cache_freed_bytes"].as_u64().unwrap() > 0, "{gc}");
    assert!(!data.path().join("uv-cache").exists());
    assert_eq!(
        std::fs::read_dir(data.path().join("envs/v1/.trash"))
            .unwrap()
            .count(),
        0
    );
}

/// A local index-less package server on loopback: serves sdists whose build backend fails
/// or hangs, for the failure tests, and one that builds (`kakoisource`) and whose build code
/// tries to write into a path given at start (a store's shared uv cache). Killed on drop.
struct SdistServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl SdistServer {
    fn start() -> SdistServer {
        SdistServer::start_with_target(Path::new("/nonexistent/kakoi-target"))
    }

    fn start_with_target(target: &Path) -> SdistServer {
        let dir = tempfile::tempdir().unwrap();
        let script = r#"
import io, sys, tarfile
# The build code of `kakoisource`: report what it can see and reach, try to plant a file in
# the target (a shared uv cache), then write a real wheel whose module carries the report.
BUILD_OK = """
def build_ok(wheel_directory):
    import base64, hashlib, json, zipfile
    target = TARGET
    seen = {"uv_cache_dir": os.environ.get("UV_CACHE_DIR", ""), "target_visible": os.path.exists(target)}
    try:
        with open(os.path.join(target, "kakoi-poisoned"), "w") as f:
            f.write("planted by a package build")
        seen["planted"] = True
    except OSError as e:
        seen["planted"] = False
        seen["plant_error"] = e.__class__.__name__
    # Its own cache is writable (and must not be the shared one).
    try:
        with open(os.path.join(seen["uv_cache_dir"], "kakoi-poisoned"), "w") as f:
            f.write("planted by a package build")
        seen["planted_in_own_cache"] = True
    except OSError:
        seen["planted_in_own_cache"] = False
    files = {
        "kakoisource.py": "SEEN = " + repr(json.dumps(seen)) + "\\n",
        "kakoisource-1.0.dist-info/METADATA": "Metadata-Version: 2.1\\nName: kakoisource\\nVersion: 1.0\\n",
        "kakoisource-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\\nGenerator: kakoi-test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append("kakoisource-1.0.dist-info/RECORD,,")
    files["kakoisource-1.0.dist-info/RECORD"] = "\\n".join(record) + "\\n"
    name = "kakoisource-1.0-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return name
""".replace("TARGET", repr(sys.argv[2]))
def sdist(name, prepare, build, extra=""):
    files = {
        "pyproject.toml": f'[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n\n[project]\nname = "{name}"\nversion = "1.0"\n',
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        "backend.py": "import os, time\n"
            "def get_requires_for_build_wheel(config_settings=None):\n    return []\n"
            "def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):\n"
            f"    {prepare}\n"
            f"    d = os.path.join(metadata_directory, '{name}-1.0.dist-info')\n"
            "    os.makedirs(d)\n"
            f"    open(os.path.join(d, 'METADATA'), 'w').write('Metadata-Version: 2.1\\nName: {name}\\nVersion: 1.0\\n')\n"
            f"    return '{name}-1.0.dist-info'\n"
            "def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):\n"
            f"    {build}\n" + extra,
    }
    with tarfile.open(f"{sys.argv[1]}/{name}-1.0.tar.gz", "w:gz") as tar:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{name}-1.0/{path}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
sdist("kakoifails", "pass", "raise RuntimeError('kakoi-test: this package refuses to build')")
sdist("kakoihangs", "time.sleep(300)", "time.sleep(300)")
sdist("kakoisource", "pass", "return build_ok(wheel_directory)", BUILD_OK)
"#;
        let status = Command::new(PYTHON)
            .args(["-c", script])
            .arg(dir.path())
            .arg(target)
            .status()
            .unwrap();
        assert!(status.success());
        let mut child = Command::new(PYTHON)
            .args([
                "-u",
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                "0",
                "--directory",
            ])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("cannot parse the server's port from {line:?}"));
        SdistServer {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self, name: &str) -> String {
        format!(
            "{name} @ http://127.0.0.1:{}/{name}-1.0.tar.gz\n",
            self.port
        )
    }
}

impl Drop for SdistServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn broken_requirements_are_env_errors_with_uvs_message() {
    if !sandbox_available() {
        return;
    }
    let data = fresh("broken");
    let server = SdistServer::start();
    let dir = inputs();
    let main = write(dir.path(), "main.py", "print('must not run')\n");
    let cases: [(&str, String, &str, &str); 5] = [
        (
            "unknown package",
            "kakoi-no-such-package-7f3a9c2e==1.0\n".into(),
            "env-resolve",
            "kakoi-no-such-package-7f3a9c2e",
        ),
        (
            "conflicting pins",
            "six==1.16.0\nsix==1.17.0\n".into(),
            "env-resolve",
            "six",
        ),
        ("syntax error", "numpy>>=1.0\n".into(), "env-resolve", ">>="),
        (
            "sdist whose build fails",
            server.url("kakoifails"),
            "env-install",
            "kakoi-test: this package refuses to build",
        ),
        (
            "pip option line",
            "six\n--index-url https://example.invalid/simple\n".into(),
            "env-requirements",
            "--index-url",
        ),
    ];
    for (what, requirements, stage, needle) in cases {
        let req = write(dir.path(), "requirements.txt", &requirements);
        let (result, out) = run_json(data.path(), &req, &[], &main);
        assert_eq!(result.status, Status::EnvError, "{what}: {}", text(&out));
        assert_eq!(out.status.code(), Some(125), "{what}");
        assert!(result.stdout.is_empty(), "{what}: the program must not run");
        let error = result.error.expect("error");
        assert_eq!(error.stage, stage, "{what}: {error:?}");
        assert!(error.message.contains(needle), "{what}: {}", error.message);
        if stage != "env-requirements" {
            assert!(
                error
                    .detail
                    .as_deref()
                    .unwrap_or("")
                    .contains("exited with"),
                "{what}: uv's exit code is reported: {error:?}"
            );
            assert!(error.hint.is_some(), "{what}");
        }
        // Without --json: the message on stderr, exit 125.
        let out = kakoi()
            .args(["run", "-r"])
            .arg(&req)
            .arg("--data-dir")
            .arg(data.path())
            .arg(&main)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(125), "{what}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("kakoi: error:") && stderr.contains(needle),
            "{what}: {stderr}"
        );
    }
    // `env build --json` reports the same status.
    let req = write(dir.path(), "requirements.txt", "six==1.16.0\nsix==1.17.0\n");
    let out = kakoi_env(
        data.path(),
        &["build", "--json", "-r", req.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(125));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["status"], "env_error");
    // Nothing half-made is visible, nothing is left in staging.
    assert!(env_dirs(data.path()).is_empty());
    assert_eq!(staging_entries(data.path()), 0);
}

/// Builds from wheels share the store's uv cache (no package code runs while it is
/// writable); a build that must run a package's build code gets a cache of its own, never
/// sees the shared one, and leaves nothing behind. A malicious sdist therefore cannot poison
/// the wheels other envs are installed from.
#[test]
fn source_builds_never_see_the_shared_uv_cache() {
    if !sandbox_available() {
        return;
    }
    let data = fresh("srcbuild");
    let shared_cache = data.path().join("uv-cache");
    let server = SdistServer::start_with_target(&shared_cache);
    let dir = inputs();
    // What the env's `kakoi-env.json` records.
    let meta = |doc: &Value| -> Value {
        let digest = doc["env"]["digest"].as_str().unwrap();
        let path = data
            .path()
            .join("envs/v1")
            .join(digest)
            .join("kakoi-env.json");
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let build = |req: &Path| -> Value {
        let out = kakoi_env(
            data.path(),
            &["build", "--json", "--quiet", "-r", req.to_str().unwrap()],
        );
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };

    // Wheels only: the shared cache, which uv fills.
    let wheels = write(dir.path(), "wheels.txt", "six==1.17.0\n");
    let doc = build(&wheels);
    assert_eq!(meta(&doc)["build_cache"], "shared", "{doc}");
    // uv hard-linked the env's files to the cache (one mount inside the build sandbox),
    // and the env is the store's and read-only, through both names.
    let six = data
        .path()
        .join("envs/v1")
        .join(doc["env"]["digest"].as_str().unwrap())
        .join("venv/lib/python3.11/site-packages/six.py");
    let meta_six = std::fs::metadata(&six).unwrap();
    assert_eq!(
        meta_six.nlink(),
        2,
        "{} is linked to the cache",
        six.display()
    );
    assert_eq!(meta_six.uid(), nix::unistd::geteuid().as_raw());
    assert_eq!(meta_six.mode() & 0o022, 0);
    // Files of the shared cache and their contents.
    let cached = |p: &Path| -> BTreeMap<String, Vec<u8>> {
        walkdir(p)
            .into_iter()
            .filter(|(_, kind)| kind == "file")
            .map(|(rel, _)| {
                let bytes = std::fs::read(p.join(&rel)).unwrap_or_default();
                (rel, bytes)
            })
            .collect()
    };
    let before = cached(&shared_cache);
    assert!(
        before.keys().any(|k| k.contains("six")),
        "uv cached six in the shared cache: {:?}",
        before.keys().take(20).collect::<Vec<_>>()
    );

    // An sdist: the wheel-only attempt finds no wheel, the build starts over in a private
    // cache, and the package's build code runs there.
    let source = write(dir.path(), "source.txt", &server.url("kakoisource"));
    let doc = build(&source);
    assert_eq!(meta(&doc)["build_cache"], "private", "{doc}");
    let main = write(
        dir.path(),
        "main.py",
        "import kakoisource\nprint(kakoisource.SEEN)\n",
    );
    let (result, out) = run_json(data.path(), &source, &[], &main);
    assert_eq!(result.status, Status::Ok, "{}", text(&out));
    let seen: Value = serde_json::from_str(result.stdout.trim()).unwrap();
    assert_eq!(seen["planted"], false, "{seen}");
    assert_eq!(seen["target_visible"], false, "{seen}");
    // Its own cache was writable; it was not the shared one, and it is gone with the build
    // (the env's files are no longer linked to anything).
    assert_eq!(seen["planted_in_own_cache"], true, "{seen}");
    let module = data
        .path()
        .join("envs/v1")
        .join(doc["env"]["digest"].as_str().unwrap())
        .join("venv/lib/python3.11/site-packages/kakoisource.py");
    assert_eq!(std::fs::metadata(&module).unwrap().nlink(), 1);
    // The wheel-only attempt added uv's own records of the sdist (inert data: nothing in a
    // shared-cache build builds it); what was there is unchanged, and nothing was planted.
    let after = cached(&shared_cache);
    for (rel, bytes) in &before {
        assert_eq!(
            after.get(rel),
            Some(bytes),
            "{rel} changed in the shared cache"
        );
    }
    assert!(
        !after.keys().any(|k| k.contains("kakoi-poisoned")),
        "{:?}",
        after.keys().collect::<Vec<_>>()
    );
    assert_eq!(staging_entries(data.path()), 0);
}

/// `relative path -> "file" | "dir" | "link"` of everything under `root`.
fn walkdir(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let kind = match entry.file_type() {
                Ok(t) if t.is_symlink() => "link",
                Ok(t) if t.is_dir() => {
                    stack.push(path.clone());
                    "dir"
                }
                _ => "file",
            };
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.insert(rel, kind.to_string());
        }
    }
    out
}

#[test]
fn a_data_dir_the_sandbox_cannot_mount_is_refused() {
    let dir = inputs();
    let req = write(dir.path(), "requirements.txt", "six\n");
    let data = tempfile::tempdir().unwrap(); // under /tmp, which sandboxes build themselves
    let out = kakoi_env(
        data.path(),
        &["build", "--json", "-r", req.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(125), "{}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["status"], "env_error");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot be mounted")
    );
    assert!(
        doc["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("/var/lib/kakoi")
    );
}

#[test]
fn concurrent_builds_of_one_digest_build_once() {
    if !sandbox_available() {
        return;
    }
    let data = fresh("race");
    let dir = inputs();
    let req = write(
        dir.path(),
        "requirements.txt",
        "six==1.17.0\nattrs==24.2.0\n",
    );
    let spawn = || {
        kakoi()
            .args(["env", "build", "--json", "--quiet", "-r"])
            .arg(&req)
            .arg("--data-dir")
            .arg(data.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children: Vec<Child> = (0..3).map(|_| spawn()).collect();
    let docs: Vec<Value> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", text(&out));
            serde_json::from_slice(&out.stdout).unwrap()
        })
        .collect();
    let built = docs
        .iter()
        .filter(|d| d["env"]["cache_hit"] == false)
        .count();
    assert_eq!(built, 1, "exactly one process builds: {docs:?}");
    let digests: std::collections::BTreeSet<&str> = docs
        .iter()
        .map(|d| d["env"]["digest"].as_str().unwrap())
        .collect();
    assert_eq!(digests.len(), 1);
    assert_eq!(env_dirs(data.path()).len(), 1);
    // All three saw the same build (same creation time in the metadata).
    let created: std::collections::BTreeSet<u64> = docs
        .iter()
        .map(|d| d["info"]["created"].as_u64().unwrap())
        .collect();
    assert_eq!(created.len(), 1);
    assert_eq!(staging_entries(data.path()), 0);
}

/// Host processes whose environment names a uv cache of this store (the shared one, or a
/// source build's private one under `.staging`): the build's uv and whatever it started
/// (scoped to one test's data directory).
fn build_processes(data: &Path) -> Vec<u32> {
    let needle = format!("UV_CACHE_DIR={}/", data.display());
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(environ) = std::fs::read(entry.path().join("environ"))
            && environ
                .split(|b| *b == 0)
                .any(|kv| kv.starts_with(needle.as_bytes()))
        {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn a_killed_build_leaves_nothing_visible_and_is_swept() {
    if !sandbox_available() {
        return;
    }
    let data = fresh("killed");
    let data_path = std::fs::canonicalize(data.path()).unwrap();
    let server = SdistServer::start();
    let dir = inputs();
    let req = write(dir.path(), "requirements.txt", &server.url("kakoihangs"));
    let log_path = dir.path().join("build.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = kakoi()
        .args(["env", "build", "--quiet", "-r"])
        .arg(&req)
        .arg("--data-dir")
        .arg(&data_path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    // Wait until the build runs inside its sandbox (its processes carry the cache path).
    let deadline = Instant::now() + Duration::from_secs(120);
    while build_processes(&data_path).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the build never started: {}",
            log()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "kakoi exited early: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the build ended by itself: {}",
        log()
    );
    // The sdist has no wheel: the build runs with a private uv cache in its directory; the
    // shared one is back in place.
    assert_eq!(
        staging_entries(&data_path),
        1,
        "a build in progress has its directory: {}",
        log()
    );
    let build_dir = std::fs::read_dir(data_path.join("envs/v1/.staging"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(build_dir.join("uv-cache").is_dir(), "{}", log());
    assert!(data_path.join("uv-cache").is_dir(), "{}", log());
    child.kill().unwrap();
    child.wait().unwrap();
    // The sandbox dies with its launcher (PDEATHSIG and pid 1's death).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !build_processes(&data_path).is_empty() {
        assert!(
            Instant::now() < deadline,
            "build processes survived: {:?}",
            build_processes(&data_path)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        env_dirs(&data_path).is_empty(),
        "nothing half-made is visible"
    );
    let out = kakoi_env(&data_path, &["list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["envs"].as_array().unwrap().len(), 0);
    // The dead build's staging dir is swept.
    let out = kakoi_env(&data_path, &["gc", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let gc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        gc["swept_staging"], 1,
        "one dead build, its private cache with it: {gc}"
    );
    assert_eq!(staging_entries(&data_path), 0);
}

/// Every file of an env: relative path -> sha256 of its content (symlinks: their target),
/// with `prefix` replaced by `<DATA>`.
fn manifest(env: &Path, prefix: &str) -> BTreeMap<String, String> {
    use sha2::Digest as _;
    let mut out = BTreeMap::new();
    let mut stack = vec![env.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let rel = path
                .strip_prefix(env)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            let content = if meta.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&path).unwrap().display()).into_bytes()
            } else {
                std::fs::read(&path).unwrap()
            };
            let normalized = replace(&content, prefix.as_bytes(), b"<DATA>");
            out.insert(rel, hex::encode(sha2::Sha256::digest(&normalized)));
        }
    }
    out
}

fn replace(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

static REPRO: Mutex<()> = Mutex::new(());

#[test]
fn the_same_requirements_build_the_same_env_in_separate_stores() {
    if !sandbox_available() {
        return;
    }
    let _serial = REPRO.lock().unwrap_or_else(|e| e.into_inner());
    let dir = inputs();
    // markupsafe ships a C extension (.so), attrs and six are pure Python.
    let req = write(
        dir.path(),
        "requirements.txt",
        "markupsafe==3.0.2\nattrs==24.2.0\nsix==1.17.0\n",
    );
    // Two stores whose paths have the same length, so that after replacing the prefix even
    // the byte layout of .pyc files (which hold their source path) compares equal.
    let a = fresh("repro");
    let b = fresh("repro");
    let mut docs = Vec::new();
    for data in [&a, &b] {
        let out = kakoi_env(
            data.path(),
            &[
                "build",
                "--json",
                "--quiet",
                "--exclude-newer",
                "2025-06-01T00:00:00Z",
                "-r",
                req.to_str().unwrap(),
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
        docs.push(serde_json::from_slice::<Value>(&out.stdout).unwrap());
    }
    assert_eq!(
        docs[0]["env"]["digest"], docs[1]["env"]["digest"],
        "same digest"
    );
    let digest = docs[0]["env"]["digest"].as_str().unwrap();
    let mut manifests = Vec::new();
    for data in [&a, &b] {
        let canonical = std::fs::canonicalize(data.path()).unwrap();
        let mut m = manifest(
            &canonical.join("envs/v1").join(digest),
            canonical.to_str().unwrap(),
        );
        // kakoi's own metadata records when and how fast it was built.
        assert!(m.remove("kakoi-env.json").is_some());
        manifests.push(m);
    }
    let pycs = manifests[0].keys().filter(|k| k.ends_with(".pyc")).count();
    let sos = manifests[0].keys().filter(|k| k.ends_with(".so")).count();
    assert!(
        pycs > 20,
        "bytecode was compiled at build time ({pycs} pycs)"
    );
    assert!(sos >= 1, "the C extension is part of the comparison");
    let differing: Vec<&String> = manifests[0]
        .iter()
        .filter(|(k, v)| manifests[1].get(*k) != Some(v))
        .map(|(k, _)| k)
        .chain(
            manifests[1]
                .keys()
                .filter(|k| !manifests[0].contains_key(*k)),
        )
        .collect();
    assert!(
        differing.is_empty(),
        "files that differ between the two builds: {differing:?}"
    );
    assert_eq!(docs[0]["info"]["packages"], docs[1]["info"]["packages"]);
    // Unchecked-hash pycs: flags word = 1 (PEP 552), no source mtime inside.
    let canonical = std::fs::canonicalize(a.path()).unwrap();
    let pyc = manifests[0]
        .keys()
        .find(|k| k.ends_with(".pyc"))
        .unwrap()
        .clone();
    let bytes = std::fs::read(canonical.join("envs/v1").join(digest).join(pyc)).unwrap();
    assert_eq!(&bytes[4..8], &[1, 0, 0, 0]);
    let _ = std::io::stderr().flush();
}

#[test]
fn the_progress_renderer_follows_uv_until_the_launcher_says_how_it_ended() {
    for (end, expected) in [("ok", "(done in"), ("failed", "(failed after")] {
        let mut child = kakoi()
            .args(["__progress", "--title", "installing environment 0123"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        write!(
            stdin,
            "Downloading numpy (16.1MiB)\n Downloaded numpy\n + numpy==2.4.6\n\u{1e}kakoi-progress-end:{end}\n"
        )
        .unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("kakoi: installing environment 0123 ") && stderr.contains(expected),
            "{end}: {stderr}"
        );
    }
}

#[test]
fn the_toolchains_ruff_lints_a_program_inside_the_sandbox() {
    if !sandbox_available() {
        return;
    }
    let tools = shared_toolchain();
    let dir = inputs();
    let main = write(dir.path(), "main.py", "import os\nprint(undefined_name)\n");
    let tools_s = tools.to_str().unwrap();
    let ruff = format!("{tools_s}/bin/ruff");
    let (result, out) = common::exec_json(
        &[
            "--bind-ro",
            &format!("{tools_s}:{tools_s}"),
            "--file",
            &format!("{}:main.py", main.display()),
        ],
        &[
            &ruff,
            "check",
            "--no-cache",
            "--output-format",
            "json",
            "/work/main.py",
        ],
    );
    // ruff exits 1 when it finds something.
    assert_eq!(result.exit_code, Some(1), "{}", text(&out));
    let diagnostics: Value = serde_json::from_str(&result.stdout).unwrap();
    let codes: Vec<&str> = diagnostics
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["code"].as_str().unwrap())
        .collect();
    assert!(
        codes.contains(&"F401") && codes.contains(&"F821"),
        "{codes:?}"
    );
}

/// A loopback server standing in for PyPI's file host: `slow` sends the headers and 1 MiB,
/// then stalls; `garbage` answers 1000 zero bytes. Killed on drop.
struct FakeFilesHost {
    child: Child,
    port: u16,
}

impl FakeFilesHost {
    fn start(mode: &str) -> FakeFilesHost {
        let script = r#"
import http.server, sys, time
mode = sys.argv[1]
class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def do_GET(self):
        self.send_response(200)
        if mode == "slow":
            self.send_header("Content-Length", str(20 * 1024 * 1024))
            self.end_headers()
            self.wfile.write(b"\0" * (1024 * 1024))
            self.wfile.flush()
            time.sleep(300)
        else:
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"\0" * 1000)
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;
        let mut child = Command::new(PYTHON)
            .args(["-c", script, mode])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        FakeFilesHost {
            child,
            port: line.trim().parse().unwrap(),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FakeFilesHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn toolchain_entries(data: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(data.join("toolchain"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("host-") || n.starts_with(".staging-"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_killed_or_corrupt_toolchain_download_leaves_nothing_half_made() {
    let data = tempfile::Builder::new()
        .prefix("bootstrap-")
        .tempdir_in(base())
        .unwrap();
    // 1. Killed in the middle of the download.
    let slow = FakeFilesHost::start("slow");
    let mut child = kakoi()
        .args(["env", "toolchain", "--toolchain", "host", "--data-dir"])
        .arg(data.path())
        .env("KAKOI_PYPI_FILES_URL", slow.url())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let partial = toolchain_entries(data.path())
            .iter()
            .find(|n| n.starts_with(".staging-"))
            .map(|n| data.path().join("toolchain").join(n).join("uv.whl"))
            .and_then(|whl| std::fs::metadata(whl).ok())
            .is_some_and(|m| m.len() > 0);
        if partial {
            break;
        }
        assert!(Instant::now() < deadline, "the download never started");
        assert!(child.try_wait().unwrap().is_none(), "kakoi exited early");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let entries = toolchain_entries(data.path());
    assert!(
        entries.iter().all(|n| !n.starts_with("host-")),
        "a killed bootstrap must not leave a toolchain: {entries:?}"
    );
    drop(slow);

    // 2. A file that does not match its pinned hash and size: refused, nothing installed,
    //    and the killed bootstrap's staging directory is swept.
    let garbage = FakeFilesHost::start("garbage");
    let out = kakoi()
        .args(["env", "toolchain", "--toolchain", "host", "--data-dir"])
        .arg(data.path())
        .env("KAKOI_PYPI_FILES_URL", garbage.url())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not match its pin"), "{stderr}");
    assert!(
        toolchain_entries(data.path()).is_empty(),
        "nothing half-made: {:?}",
        toolchain_entries(data.path())
    );
}
