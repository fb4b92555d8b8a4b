//! The `shmbus` command-line tool: a thin layer over the library.
//!
//! `shmbus demo` streams typed messages from a publisher process to a subscriber process and
//! checks every one, then measures the round trip; `shmbus bench` measures shmbus beside the
//! raw limits of the machine, in two pinned processes; `list`, `inspect`, `echo`, `pub` and
//! `clean` look at a bus, its messages and its leftovers (`topics.rs`), `record` and `replay`
//! keep a topic in a journal file and play it back (`journal.rs`), `hz` and `top` at its
//! rates (`live.rs`), and `doctor` at the machine it runs on (`doctor.rs`). The hidden `__demo-subscriber` and
//! `__bench-peer` subcommands are the child processes those two start by re-executing this
//! binary; they are not for people.
//!
//! A user error is one line on stderr and a non-zero exit, never a panic or a backtrace.

mod affinity;
mod bench;
mod demo;
mod doctor;
mod error;
mod journal;
mod live;
mod peer;
mod stats;
mod sweep;
mod topics;
mod watchdog;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A zero-copy message bus over shared memory.
#[derive(Parser, Debug)]
#[command(name = "shmbus", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Stream messages from a publisher process to a subscriber process, check every one,
    /// then measure the round trip.
    Demo(demo::DemoArgs),
    /// Measure shmbus beside the raw limits of this machine, in two pinned processes.
    #[command(after_help = bench::CASES_HELP)]
    Bench(bench::BenchArgs),
    /// List the topics of a bus: type, policy, capacity, messages published, publishers and
    /// subscribers.
    List(topics::ListArgs),
    /// Describe one topic: its header, each publisher and subscriber (pid, alive, position,
    /// lag, losses) and its counters.
    Inspect(topics::InspectArgs),
    /// Print a topic's messages as they arrive (sequence, publisher lane, length, hex bytes).
    Echo(topics::EchoArgs),
    /// Publish test byte messages to a topic (creating it if it does not exist).
    Pub(topics::PubArgs),
    /// Record a topic of any bus (any transport, any type) into a journal file.
    Record(journal::RecordArgs),
    /// Publish a journal's messages into a topic, at the recorded pace or as fast as the
    /// subscribers take them; the topic has the recorded type.
    Replay(journal::ReplayArgs),
    /// A topic's publish rate and, per subscriber, read rate, lag and losses, every interval.
    Hz(live::HzArgs),
    /// Every topic's publish rate, publishers, subscribers, largest lag and losses, every
    /// interval, redrawn in place.
    Top(live::TopArgs),
    /// Remove the topics whose processes are all dead (this user's, this bus's; never a live
    /// one).
    Clean(topics::CleanArgs),
    /// Check the environment (the bus directory's filesystem, room and permissions, limits,
    /// IPC namespace, CPUs) and say what to fix; exits 1 if a check fails.
    Doctor(doctor::DoctorArgs),
    #[command(name = "__demo-subscriber", hide = true)]
    DemoSubscriber(demo::SubscriberArgs),
    #[command(name = "__bench-peer", hide = true)]
    BenchPeer(bench::PeerArgs),
}

fn ok(_: ()) -> ExitCode {
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Children share their parent's terminal, where a progress line may be showing.
    let (name, child, result) = match cli.command {
        Command::Demo(args) => ("demo", false, demo::run(args)),
        Command::Bench(args) => ("bench", false, bench::run(args)),
        Command::List(args) => ("list", false, topics::list(args).map(ok)),
        Command::Inspect(args) => ("inspect", false, topics::inspect(args).map(ok)),
        Command::Echo(args) => ("echo", false, topics::echo(args).map(ok)),
        Command::Pub(args) => ("pub", false, topics::publish(args).map(ok)),
        Command::Record(args) => ("record", false, journal::record(args).map(ok)),
        Command::Replay(args) => ("replay", false, journal::replay(args).map(ok)),
        Command::Hz(args) => ("hz", false, live::hz(args).map(ok)),
        Command::Top(args) => ("top", false, live::top(args).map(ok)),
        Command::Clean(args) => ("clean", false, topics::clean(args).map(ok)),
        Command::Doctor(args) => ("doctor", false, doctor::run(args)),
        Command::DemoSubscriber(args) => (
            "demo: subscriber",
            true,
            demo::subscriber_main(args).map(|()| ExitCode::SUCCESS),
        ),
        Command::BenchPeer(args) => (
            "bench: peer",
            true,
            bench::peer_main(args).map(|()| ExitCode::SUCCESS),
        ),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let fresh_line = if child && std::io::stderr().is_terminal() {
                "\n"
            } else {
                ""
            };
            eprintln!("{fresh_line}shmbus {name}: error: {e}");
            ExitCode::FAILURE
        }
    }
}
