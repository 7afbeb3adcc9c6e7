//! `berth-runc`: see [`berth::runc_cli`].
fn main() -> std::process::ExitCode {
    berth::runc_cli::main()
}
