//! The `veil` binary: parses the command line and hands over to [`veil_gateway::cli`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    veil_gateway::cli::main()
}
