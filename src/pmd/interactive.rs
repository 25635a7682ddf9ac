//! Interactive mode (`-i`): testpmd's commands, read from stdin on its own thread.

use super::args::parse_mode;
use super::session::Session;
use std::io::{BufRead, Write};
use std::sync::mpsc;

pub(super) const HELP: &str = "\
Commands:
  start                  start forwarding
  stop                   stop forwarding and show the forward statistics
  set fwd MODE           switch, io, mac, macswap, rxonly, txonly, flowgen (also while forwarding)
  show port stats all    per-port counters and rates since the last show
  clear port stats all   zero the port and worker counters
  show fwd stats all     counters since the last start, and the workers' cycles
  help                   this text
  quit                   stop, close the ports and exit (EOF does the same)";

pub(super) enum Next {
    Go,
    Quit,
}

pub(super) fn command(s: &mut Session, line: &str) -> Next {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] => {}
        ["start"] => {
            if s.running() {
                println!("Packet forwarding already started");
            } else {
                match s.start() {
                    Ok(()) => println!(
                        "Start {} packet forwarding on {} worker(s)",
                        s.mode.name(),
                        s.setup_opts.cores.len()
                    ),
                    Err(e) => println!("{e}"),
                }
            }
        }
        ["stop"] => match s.stop() {
            Some(ws) => {
                println!(
                    "Telling workers to stop... done in {:.3} ms",
                    s.last_stop.unwrap_or_default().as_secs_f64() * 1e3
                );
                s.show_fwd_stats(Some(&ws));
                println!("Done.");
            }
            None => println!("Packet forwarding not started"),
        },
        ["set", "fwd", m] => match parse_mode(m) {
            Ok(mode) => match s.set_fwd(mode) {
                Ok(()) => println!("Set {} packet forwarding mode", mode.name()),
                Err(e) => println!("{e}"),
            },
            Err(e) => println!("{e}"),
        },
        ["show", "port", "stats", "all"] => s.show_port_stats(),
        ["clear", "port", "stats", "all"] => {
            s.clear();
            println!("  NIC statistics for all ports cleared");
        }
        ["show", "fwd", "stats", "all"] => s.show_fwd_stats(None),
        ["help"] => println!("{HELP}"),
        ["quit"] | ["exit"] => return Next::Quit,
        _ => println!("Unknown or bad command: {line:?} (type help)"),
    }
    let _ = std::io::stdout().flush();
    Next::Go
}

/// Reads stdin on its own thread so that the main loop can watch signals and timers; EOF (or
/// an unreadable stdin) ends the channel.
pub(super) fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new().name("sy-pmd-stdin".into()).spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot read stdin");
    }
    rx
}
