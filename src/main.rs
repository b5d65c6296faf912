//! The sigorest server: parse the command line, run, map the result to an exit code.

use std::process::ExitCode;

use sigorest::Error;
use sigorest::config::{self, Command};
use sigorest::print_to_stdout;

fn main() -> ExitCode {
    let config = match config::parse_args(std::env::args_os().skip(1).collect()) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => {
            let text = format!("{}\n", config::usage());
            return ExitCode::from(print_to_stdout("sigorest", &text));
        }
        Ok(Command::Version) => {
            let text = format!("sigorest {}\n", sigorest::VERSION);
            return ExitCode::from(print_to_stdout("sigorest", &text));
        }
        Err(e) => {
            eprintln!("sigorest: {e}");
            return ExitCode::from(2);
        }
    };
    sigorest::logging::init(config.log_level, config.json_log);
    // A panic (a bug: a handler's panic is answered with a 500 and the server goes on) is
    // reported as a log line, so that JSON logs stay one object a line.
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_string());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        log::error!(thread = thread.name().unwrap_or("?"), location = location.as_str(), message = message.as_str(); "panic");
    }));
    match sigorest::server::run(&config, sigorest::env::Env::from_process()) {
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
