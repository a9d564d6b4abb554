//! The `statusd` binary: everything is in the library ([`statusd::cli`]).

fn main() -> std::process::ExitCode {
    statusd::cli::main()
}
