//! The request parsers and the launcher protocol under hostile input, on stable Rust:
//!
//! 1. every file of the committed corpus (`fuzz/corpus/<target>/`, seeds plus regressions
//!    found by `cargo +nightly fuzz run <target>`) is replayed;
//! 2. a bounded, seeded mutation fuzzer (byte flips, inserts, deletes, splices, interesting
//!    tokens) runs a few thousand inputs per target derived from that corpus.
//!
//! The property: no panic, and every refusal is the right HTTP class (400, or 413 for an
//! oversized multipart body); frames never allocate past the frame limit.

use std::path::{Path, PathBuf};

use kakoi::server::ErrorKind;
use kakoi::server::protocol::{FromWorker, MAX_FRAME, ToWorker, read_frame};
use kakoi::server::request::{MAX_FILES, job_from_json, job_from_multipart_bytes};

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    assert!(files.len() >= 5, "the {target} corpus is missing");
    files
}

fn check_json(input: &[u8]) -> Result<(), String> {
    match job_from_json(input) {
        Ok(job) if job.files.len() > MAX_FILES => Err(format!("{} files", job.files.len())),
        Ok(_) => Ok(()),
        Err(e) if e.kind == ErrorKind::BadRequest && !e.message.is_empty() => Ok(()),
        Err(e) => Err(format!("wrong refusal {e:?}")),
    }
}

fn check_multipart(input: &[u8]) -> Result<(), String> {
    match job_from_multipart_bytes(input, "XyZ", 64 << 10) {
        Ok(job) if job.files.len() > MAX_FILES => Err(format!("{} files", job.files.len())),
        Ok(_) => Ok(()),
        Err(e)
            if matches!(e.kind, ErrorKind::BadRequest | ErrorKind::PayloadTooLarge)
                && !e.message.is_empty() =>
        {
            Ok(())
        }
        Err(e) => Err(format!("wrong refusal {e:?}")),
    }
}

fn check_frames(input: &[u8]) -> Result<(), String> {
    let mut r = input;
    let mut n = 0;
    while let Ok(Some(_)) = read_frame::<_, ToWorker>(&mut r) {
        n += 1;
        if n > input.len() {
            return Err("more frames than bytes".into());
        }
    }
    let mut r = input;
    while let Ok(Some(_)) = read_frame::<_, FromWorker>(&mut r) {}
    Ok(())
}

/// Run `check` on `input`, turning a panic into an error that names the input.
fn guarded(check: fn(&[u8]) -> Result<(), String>, input: &[u8]) -> Result<(), String> {
    match std::panic::catch_unwind(|| check(input)) {
        Ok(r) => r,
        Err(p) => Err(format!(
            "panicked: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    }
}

/// xorshift64*: a fixed, dependency-free generator so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const TOKENS: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"\\u0000",
    b"\\ud800",
    b"null",
    b"1e999",
    b"-1",
    b"18446744073709551616",
    b"\"code\"",
    b"\"files\"",
    b"\"base64\"",
    b"\r\n",
    b"--XyZ",
    b"--XyZ--",
    b"Content-Disposition: form-data; name=\"",
    b"; filename=\"",
    b"main.py",
    b"../",
    b"\xff\xfe",
    b"\x00\x00\x00\x10",
    b"\xff\xff\xff\xff",
];

fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
            2 if !v.is_empty() => {
                let a = rng.below(v.len());
                let b = (a + rng.below(16)).min(v.len());
                v.drain(a..b);
            }
            3 => {
                let i = rng.below(v.len() + 1);
                let t = TOKENS[rng.below(TOKENS.len())];
                v.splice(i..i, t.iter().copied());
            }
            4 if !other.is_empty() => {
                let a = rng.below(other.len());
                let b = (a + rng.below(64)).min(other.len());
                let i = rng.below(v.len() + 1);
                v.splice(i..i, other[a..b].iter().copied());
            }
            _ if !v.is_empty() => {
                let a = rng.below(v.len());
                let b = (a + rng.below(32)).min(v.len());
                let chunk = v[a..b].to_vec();
                let i = rng.below(v.len() + 1);
                v.splice(i..i, chunk);
            }
            _ => {}
        }
    }
    v
}

fn fuzz(target: &str, check: fn(&[u8]) -> Result<(), String>, iterations: usize) {
    let seeds = corpus(target);
    let mut failures = Vec::new();
    for (path, bytes) in &seeds {
        if let Err(e) = guarded(check, bytes) {
            failures.push(format!("{}: {e}", path.display()));
        }
    }
    let mut rng = Rng(0x6b61_6b6f_6900_0001 ^ target.len() as u64);
    for i in 0..iterations {
        let seed = &seeds[rng.below(seeds.len())].1;
        let other = &seeds[rng.below(seeds.len())].1;
        let input = mutate(&mut rng, seed, other);
        if let Err(e) = guarded(check, &input) {
            failures.push(format!(
                "iteration {i}: {e}\ninput: {:?}",
                String::from_utf8_lossy(&input)
            ));
            if failures.len() > 5 {
                break;
            }
        }
    }
    assert!(failures.is_empty(), "{target}:\n{}", failures.join("\n"));
}

#[test]
fn json_bodies_survive_the_corpus_and_mutations() {
    fuzz("run_json", check_json, 4000);
}

#[test]
fn multipart_bodies_survive_the_corpus_and_mutations() {
    fuzz("run_multipart", check_multipart, 3000);
}

#[test]
fn frames_survive_the_corpus_and_mutations() {
    fuzz("frame", check_frames, 4000);
    // The limit itself: a prefix just over it is refused without reading on.
    let mut over = (MAX_FRAME + 1).to_be_bytes().to_vec();
    over.extend_from_slice(&[b'x'; 16]);
    assert!(read_frame::<_, ToWorker>(&mut over.as_slice()).is_err());
}

#[test]
fn the_checker_itself_can_fail() {
    // A parser that panicked or answered 500 must be caught, or the fuzzer proves nothing.
    assert!(guarded(|_| panic!("boom"), b"x").is_err());
    assert!(guarded(|_| Err("wrong".into()), b"x").is_err());
}
