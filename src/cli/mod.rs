//! Command line interface: one module per subcommand, each with its own `execute()`.

use clap::{Parser, Subcommand};

pub mod common;
pub mod docker;
pub mod doctor;
pub mod env;
pub mod exec;
pub mod launch;
pub mod mcp;
pub mod run;
pub mod serve;

/// Run untrusted code in a Linux sandbox built from namespaces, cgroups, seccomp and Landlock.
#[derive(Debug, Parser)]
#[command(name = "kakoi", version, about, long_about = None)]
pub struct Cli {
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command in the sandbox: `kakoi exec [OPTIONS] -- CMD [ARGS...]`.
    Exec(exec::ExecArgs),
    /// Run a Python file in the sandbox: `kakoi run [OPTIONS] main.py [ARGS...]`.
    Run(run::RunArgs),
    /// Check what this host supports and which isolation layers a run gets.
    Doctor(doctor::DoctorArgs),
    /// Python environments: build, list, gc, rm, toolchain.
    Env(env::EnvArgs),
    /// Internal: draws build progress from uv's output on stdin (used by `env build`/`run -r`).
    #[command(name = "__progress", hide = true)]
    Progress(env::ProgressArgs),
    /// Docker mode: build the worker image, clean up (`kakoi docker build-image`).
    Docker(docker::DockerArgs),
    /// Serve the HTTP API (`POST /run`, `/health`, `/metrics`, `/openapi.json`, `/envs`, `/mcp`).
    Serve(serve::ServeArgs),
    /// Serve MCP on stdin/stdout (tools: run_python, build_env, list_envs, run_command).
    Mcp(mcp::McpArgs),
    /// Internal: the single-threaded launcher `kakoi serve` spawns.
    #[command(name = "__launch", hide = true)]
    Launch(launch::LaunchArgs),
}

/// Entry point used by `main.rs`; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Exec(args) => args.execute(),
        Command::Run(args) => args.execute(),
        Command::Doctor(args) => args.execute(),
        Command::Env(args) => args.execute(),
        Command::Progress(args) => args.execute(),
        Command::Docker(args) => args.execute(),
        Command::Serve(args) => args.execute(),
        Command::Mcp(args) => args.execute(),
        Command::Launch(args) => args.execute(),
    };
    match outcome {
        Ok(code) => code,
        Err(err) => {
            print_error_chain(&err);
            125
        }
    }
}

/// Print an error with its causes, one per line, and any known hint.
pub fn print_error_chain(err: &anyhow::Error) {
    eprintln!("kakoi: error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    for hint in docker::hints(err) {
        eprintln!("  hint: {hint}");
    }
}
