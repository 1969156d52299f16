//! `consul-emulator [--listen 127.0.0.1:PORT]`: runs the dev-only Consul KV emulator for manual
//! demos (`vsync` with `state = { backend = "consul", address = "<printed URL>" }`) until killed.

use vsync_consul_emulator::{Emulator, EmulatorConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut listen = "127.0.0.1:0".to_owned();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap_or_else(|| usage("--listen needs an address")),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument `{other}`")),
        }
    }
    if !listen.starts_with("127.0.0.1:") && !listen.starts_with("localhost:") {
        usage("the emulator listens on loopback only");
    }
    let emu = Emulator::start_on(&listen, EmulatorConfig::default());
    println!("{}", emu.url());
    loop {
        std::thread::park();
    }
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("error: {problem}");
    }
    eprintln!("usage: consul-emulator [--listen 127.0.0.1:PORT]");
    std::process::exit(2);
}
