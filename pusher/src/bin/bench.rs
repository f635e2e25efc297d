//! Load client of `cargo xtask bench pusher` (work in progress).

fn main() {
    eprintln!("pushscope-pusher-bench: not implemented yet");
    std::process::exit(2);
}
