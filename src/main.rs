//! The `kakoi` command line: parse, run, print the error chain once, exit.

fn main() {
    std::process::exit(kakoi::cli::main());
}
