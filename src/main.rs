use clap::Parser;

fn main() -> std::process::ExitCode {
    seggpu::staging::install_signal_cleanup();
    let cli = seggpu::cli::Cli::parse();
    match seggpu::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", seggpu::cli::error_text(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
