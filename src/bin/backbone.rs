//! The `backbone` command-line tool: see `backbone --help`, or
//! `backbone::cli` for an application's own build of it with its event
//! types registered.

fn main() -> std::process::ExitCode {
    backbone::cli::main_with(backbone::cli::Registry::new())
}
