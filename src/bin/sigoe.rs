//! sigoe, the command-line client of sigorest: parse the command line, run, map the result
//! to an exit code (0 answered, 1 the model or the network failed, 2 bad usage). The work is
//! in [`sigorest::cli`].

use std::process::ExitCode;

use sigorest::cli::{self, Command};
use sigorest::print_to_stdout;

fn main() -> ExitCode {
    let opts = match cli::parse_args(std::env::args_os().skip(1).collect()) {
        Ok(Command::Run(opts)) => opts,
        Ok(Command::Help) => {
            return ExitCode::from(print_to_stdout("sigoe", &cli::usage()));
        }
        Ok(Command::Version) => {
            let text = format!("sigoe {}\n", sigorest::VERSION);
            return ExitCode::from(print_to_stdout("sigoe", &text));
        }
        Err(e) => {
            eprintln!("sigoe: {e}");
            return ExitCode::from(2);
        }
    };
    sigorest::logging::init(opts.log_level, false);
    match cli::run(&opts, &sigorest::env::Env::from_process()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(stop) => {
            eprintln!("sigoe: {}", stop.reason());
            ExitCode::from(stop.exit_status())
        }
    }
}
