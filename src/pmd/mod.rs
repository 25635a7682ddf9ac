//! `switchyard pmd`: the testpmd-style benchmark CLI (docs/semantics.md, "switchyard pmd").
//!
//! Every argument is checked before anything starts (no port is opened, no file written, no
//! thread started): a bad argument is refused with a message that names it, exit code 2. Then
//! the ports are opened with the port factory (named p0, p1, ... in order), all put on one
//! bridge that trunks every VLAN, and the [`Engine`](switchyard_dataplane::worker::Engine) runs them in the chosen forwarding mode.
//!
//! Stop is clean: `stop`, `quit`, EOF on stdin, SIGINT and SIGTERM stop every worker (the time
//! it took is printed), the ports are closed, and the buffers still out of the pools are
//! counted and printed (0 when nothing leaked). A second SIGINT/SIGTERM exits at once.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

mod args;
mod interactive;
mod report;
mod session;

use args::check;
pub use args::PmdArgs;
use interactive::{command, stdin_lines, Next};
use session::Session;

pub fn main(a: PmdArgs) -> ExitCode {
    switchyard_dataplane::worker::raise_fd_limit();
    let setup = match check(&a) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchyard pmd: {e}");
            return ExitCode::from(2);
        }
    };
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while stopping exits at once (status 1).
        let r = signal_hook::flag::register_conditional_shutdown(sig, 1, term.clone())
            .and_then(|_| signal_hook::flag::register(sig, term.clone()));
        if let Err(e) = r {
            eprintln!("switchyard pmd: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut s = match Session::open(&setup) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchyard pmd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let workers = setup.opts.cores.iter().map(|c| c.map_or("unpinned".into(), |c| format!("core {c}")));
    println!(
        "switchyard pmd: {} port(s), {} mode, burst {}, workers: {}{}",
        setup.specs.len(),
        setup.mode.name(),
        setup.opts.burst,
        workers.collect::<Vec<_>>().join(", "),
        if setup.opts.busy_poll { ", busy polling" } else { "" }
    );
    for (i, spec) in setup.specs.iter().enumerate() {
        println!("  p{i}: {spec}");
    }
    let period = a.stats_period.map(Duration::from_secs_f64);
    let input = if a.interactive {
        print!("switchyard> ");
        let _ = std::io::stdout().flush();
        Some(stdin_lines())
    } else {
        if let Err(e) = s.start() {
            eprintln!("switchyard pmd: {e}");
            return ExitCode::FAILURE;
        }
        match a.seconds {
            Some(secs) => println!("Forwarding for {secs} s ..."),
            None => println!("Forwarding; stop with Ctrl-C (SIGINT) or SIGTERM ..."),
        }
        None
    };
    let _ = std::io::stdout().flush();
    let deadline = a.seconds.map(|secs| Instant::now() + Duration::from_secs_f64(secs));
    let tick = Duration::from_millis(5);
    loop {
        if term.load(Ordering::Acquire) {
            println!("\nSignal received, stopping.");
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if let Some(p) = period {
            if s.running() && s.period_mark.0.elapsed() >= p {
                s.print_period();
            }
        }
        match &input {
            Some(rx) => match rx.recv_timeout(tick) {
                Ok(line) => {
                    if let Next::Quit = command(&mut s, line.trim()) {
                        break;
                    }
                    print!("switchyard> ");
                    let _ = std::io::stdout().flush();
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    println!();
                    break;
                }
            },
            None => {
                let left = deadline.map_or(tick, |d| d.saturating_duration_since(Instant::now()));
                std::thread::sleep(left.min(tick));
            }
        }
    }
    let (text, j) = s.finish(a.seconds);
    print!("{text}");
    if a.json {
        println!("{j}");
    }
    let _ = std::io::stdout().flush();
    ExitCode::SUCCESS
}
