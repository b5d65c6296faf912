//! The sigorest server: parse the command line, run, map the result to an exit code.

use std::process::ExitCode;

use sigorest::Error;
use sigorest::config::{self, Command};

fn main() -> ExitCode {
    let config = match config::parse_args(std::env::args_os().skip(1).collect()) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => {
            println!("{}", config::usage());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("sigorest {}", sigorest::VERSION);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("sigorest: {e}");
            return ExitCode::from(2);
        }
    };
    sigorest::logging::init(config.log_level, config.json_log);
    match sigorest::app::run(&config, sigorest::env::Env::from_process()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!(error = e.to_string(); "sigorest cannot run");
            eprintln!("sigorest: {e}");
            // A file or flag the user must fix: 2, as for a bad flag; anything else: 1.
            match e {
                Error::File { .. } | Error::Usage { .. } => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}
