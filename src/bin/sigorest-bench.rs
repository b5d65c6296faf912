//! `sigorest-bench`: measures what the gateway adds on top of its upstream (see
//! `sigorest::bench`). Parse, run, map the result to an exit code.

use std::process::ExitCode;

use sigorest::bench::{self, BenchError, Command};

fn main() -> ExitCode {
    let opts = match bench::parse_args(std::env::args_os().skip(1).collect()) {
        Ok(Command::Run(opts)) => opts,
        Ok(Command::Help) => {
            println!("{}", bench::usage());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("sigorest-bench: {e}");
            return ExitCode::from(2);
        }
    };
    match bench::run(&opts, &mut std::io::stdout().lock()) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sigorest-bench: {e}");
            match e {
                BenchError::Usage(_) => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}
