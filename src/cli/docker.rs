//! `kakoi docker ...`: the worker image and housekeeping of the Docker backend.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand};

use crate::backend::docker::{
    self as docker_backend, DEFAULT_IMAGE, DockerClient, DockerConfig, image,
};
use crate::result::Status;
use crate::sandbox::RunOptions;
use crate::spec::RunSpec;

/// Options of `kakoi docker`.
#[derive(Debug, Args)]
pub struct DockerArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: DockerCommand,
}

/// `kakoi docker` subcommands.
#[derive(Debug, Subcommand)]
pub enum DockerCommand {
    /// Build the worker image that `--backend docker` runs in (no registry needed).
    BuildImage(BuildImageArgs),
    /// Make sure the local Debian base image exists (cached debootstrap + import) and print
    /// its tag, e.g. for `docker build --build-arg BASE=$(kakoi docker base-image) ...`.
    BaseImage(BaseImageArgs),
    /// Remove containers and cgroups left by kakoi processes that died.
    Clean,
}

/// Options of `kakoi docker base-image`.
#[derive(Debug, Args)]
pub struct BaseImageArgs {
    /// Where the debootstrap rootfs tarball is cached.
    #[arg(long, value_name = "DIR", env = "KAKOI_DOCKER_CACHE")]
    pub cache_dir: Option<PathBuf>,
    /// Debian suite.
    #[arg(long, default_value = image::SUITE)]
    pub suite: String,
    /// apt mirror.
    #[arg(long, default_value = image::MIRROR)]
    pub mirror: String,
}

/// Options of `kakoi docker build-image`.
#[derive(Debug, Args)]
pub struct BuildImageArgs {
    /// Build FROM this local image instead of the Debian base (it needs sh, head, GNU tar
    /// and find, chmod, sleep and python3.11; kakoi never pulls).
    #[arg(long, value_name = "NAME", conflicts_with = "rootfs_tar")]
    pub base_image: Option<String>,
    /// Import this root filesystem tarball as the base instead of running debootstrap.
    #[arg(long, value_name = "FILE")]
    pub rootfs_tar: Option<PathBuf>,
    /// Tag of the worker image.
    #[arg(long, default_value = DEFAULT_IMAGE)]
    pub tag: String,
    /// Where the debootstrap rootfs tarball is cached.
    #[arg(long, value_name = "DIR", env = "KAKOI_DOCKER_CACHE")]
    pub cache_dir: Option<PathBuf>,
    /// Debian suite of the default base.
    #[arg(long, default_value = image::SUITE)]
    pub suite: String,
    /// apt mirror of the default base.
    #[arg(long, default_value = image::MIRROR)]
    pub mirror: String,
    /// Print the builder's output.
    #[arg(long, short)]
    pub verbose: bool,
}

impl DockerArgs {
    /// Run the subcommand.
    pub fn execute(self) -> anyhow::Result<i32> {
        match self.command {
            DockerCommand::BuildImage(args) => args.execute(),
            DockerCommand::BaseImage(args) => {
                let runtime = docker_backend::runtime()?;
                let (docker, _) = runtime.block_on(docker_backend::connect_engine())?;
                let cache_dir = args.cache_dir.unwrap_or_else(image::default_cache_dir);
                let tag = debian_base(&runtime, &docker, &cache_dir, &args.suite, &args.mirror)?;
                println!("{tag}");
                Ok(0)
            }
            DockerCommand::Clean => {
                let runtime = docker_backend::runtime()?;
                // Cleaning needs no worker image.
                let removed = runtime.block_on(async {
                    DockerClient::connect_unchecked(DockerConfig::default())
                        .await?
                        .clean_stale()
                        .await
                })?;
                eprintln!("kakoi: removed {removed} stale container(s)");
                Ok(0)
            }
        }
    }
}

/// The cached debootstrap rootfs, imported: returns the base image's tag.
fn debian_base(
    runtime: &tokio::runtime::Runtime,
    docker: &bollard::Docker,
    cache_dir: &std::path::Path,
    suite: &str,
    mirror: &str,
) -> anyhow::Result<String> {
    let started = Instant::now();
    let rootfs = image::ensure_rootfs(cache_dir, suite, mirror, &note)?;
    note(&format!(
        "rootfs {} ({} in {:.1} s)",
        rootfs.path.display(),
        if rootfs.cache_hit { "cached" } else { "built" },
        started.elapsed().as_secs_f64()
    ));
    let tag = image::debootstrap_base_tag(&rootfs, suite);
    let started = Instant::now();
    if runtime.block_on(image::import_rootfs(docker, &rootfs.path, &tag))? {
        note(&format!(
            "imported as {tag} in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
    } else {
        note(&format!("base {tag} already imported"));
    }
    Ok(tag)
}

fn note(message: &str) {
    eprintln!("kakoi: {message}");
}

impl BuildImageArgs {
    /// Build the base (or reuse it), then the worker image, then check it with one run.
    pub fn execute(self) -> anyhow::Result<i32> {
        let total = Instant::now();
        let runtime = docker_backend::runtime()?;
        let (docker, engine) = runtime.block_on(docker_backend::connect_engine())?;
        note(&format!(
            "engine {} (API {}) at {}",
            engine.version, engine.api_version, engine.endpoint
        ));
        let base = match (&self.base_image, &self.rootfs_tar) {
            (Some(name), _) => name.clone(),
            (None, Some(tarball)) => {
                let tag = image::tarball_base_tag(tarball)?;
                let started = Instant::now();
                if runtime.block_on(image::import_rootfs(&docker, tarball, &tag))? {
                    note(&format!(
                        "imported {} as {tag} in {:.1} s",
                        tarball.display(),
                        started.elapsed().as_secs_f64()
                    ));
                } else {
                    note(&format!("base {tag} already imported"));
                }
                tag
            }
            (None, None) => {
                let cache_dir = self
                    .cache_dir
                    .clone()
                    .unwrap_or_else(image::default_cache_dir);
                let started = Instant::now();
                let rootfs = image::ensure_rootfs(&cache_dir, &self.suite, &self.mirror, &note)?;
                note(&format!(
                    "rootfs {} ({} in {:.1} s)",
                    rootfs.path.display(),
                    if rootfs.cache_hit { "cached" } else { "built" },
                    started.elapsed().as_secs_f64()
                ));
                let tag = image::debootstrap_base_tag(&rootfs, &self.suite);
                let started = Instant::now();
                if runtime.block_on(image::import_rootfs(&docker, &rootfs.path, &tag))? {
                    note(&format!(
                        "imported as {tag} in {:.1} s",
                        started.elapsed().as_secs_f64()
                    ));
                } else {
                    note(&format!("base {tag} already imported"));
                }
                tag
            }
        };
        let started = Instant::now();
        let verbose = self.verbose;
        let progress = move |line: &str| {
            if verbose {
                eprintln!("  {line}");
            }
        };
        let id = runtime.block_on(image::build_worker(&docker, &base, &self.tag, &progress))?;
        note(&format!(
            "built {} ({}) FROM {base} in {:.1} s",
            self.tag,
            id.trim_start_matches("sha256:").get(..12).unwrap_or(&id),
            started.elapsed().as_secs_f64()
        ));
        self.check(&runtime)?;
        note(&format!(
            "done in {:.1} s; use it with: kakoi exec --backend docker{} -- python3 -c 'print(42)'",
            total.elapsed().as_secs_f64(),
            if self.tag == DEFAULT_IMAGE {
                String::new()
            } else {
                format!(" --docker-image {}", self.tag)
            }
        ));
        Ok(0)
    }

    /// One run in the new image: python3.11 as uid 1000, compared with the host's Python.
    fn check(&self, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
        let result = runtime.block_on(async {
            let client = DockerClient::connect(DockerConfig {
                image: self.tag.clone(),
                ..DockerConfig::default()
            })
            .await?;
            client
                .run(
                    &RunSpec::command([
                        "python3.11",
                        "-c",
                        "import os, platform; print(platform.python_version(), os.getuid(), os.getgid())",
                    ]),
                    RunOptions::default(),
                )
                .await
        })?;
        anyhow::ensure!(
            result.status == Status::Ok,
            "the new image failed its check run ({:?}): {}{}",
            result.status,
            result.stderr,
            result
                .error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_default()
        );
        let mut words = result.stdout.split_whitespace();
        let version = words.next().unwrap_or_default().to_owned();
        let ids: Vec<&str> = words.collect();
        anyhow::ensure!(
            ids == ["1000", "1000"],
            "the check run did not run as uid/gid 1000: {}",
            result.stdout
        );
        note(&format!(
            "check run: python {version} as uid 1000 in {:.0} ms",
            result.timings.setup_ms + result.timings.run_ms + result.timings.cleanup_ms
        ));
        let host = std::process::Command::new("/usr/bin/python3.11")
            .args(["-c", "import platform; print(platform.python_version())"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        match host {
            Some(host) if host != version => note(&format!(
                "warning: the image has Python {version}, the host {host}: environments built on the host may not load in containers"
            )),
            Some(_) => {}
            None => note("note: no /usr/bin/python3.11 on the host to compare with"),
        }
        Ok(())
    }
}

/// Print `hint:` lines for errors of the Docker backend found in `err`'s chain.
pub fn hints(err: &anyhow::Error) -> Vec<String> {
    let mut out = Vec::new();
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<docker_backend::DockerError>()
            && let Some(h) = e.hint()
        {
            out.push(h);
        }
        if let Some(e) = cause.downcast_ref::<image::ImageError>()
            && let Some(h) = e.hint()
        {
            out.push(h);
        }
    }
    out.dedup();
    out
}
