//! `ringcast-tune` (see the library's documentation).

fn main() -> std::process::ExitCode {
    ringcast_tune::main()
}
