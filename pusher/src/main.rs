//! `pushscope-pusher`: parse the command line, run, map errors to exit codes
//! (2: bad usage, 1: runtime failure).

use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    let settings = match pusher::Opts::parse().check() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pushscope-pusher: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = pusher::run(settings) {
        eprintln!("pushscope-pusher: {e:#}");
        std::process::exit(1);
    }
}
