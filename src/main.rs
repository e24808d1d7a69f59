use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = seggpu::cli::Cli::parse();
    match seggpu::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
