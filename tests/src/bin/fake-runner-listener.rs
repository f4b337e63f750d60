//! `bin/Runner.Listener` of the fake runner release (see `runner_agent_tests::fake_runner`).

fn main() -> std::process::ExitCode {
    let code = runner_agent_tests::fake_runner::listener::main();
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}
