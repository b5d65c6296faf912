//! The sigorest server: parse the command line, run, map the result to an exit code.

fn main() {
    eprintln!("sigorest {}: not built yet", sigorest::VERSION);
    std::process::exit(1);
}
