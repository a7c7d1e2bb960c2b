//! `ringcast`: operator commands (see `ringcast_cli`).

fn main() -> std::process::ExitCode {
    ringcast_cli::main()
}
