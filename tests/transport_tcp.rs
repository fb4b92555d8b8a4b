//! The TCP transport beyond what tests/conformance.rs checks of every transport: one address
//! serving several topics of one process, each subscriber process getting its own; an unknown
//! topic; the token (required beyond loopback, checked, its absence refused); peers that send
//! garbage or nothing, which must not stop real subscribers from being served; what a second
//! publisher on the same address gets; `TCP_NODELAY` read back from both ends of a connection.
//!
//! Publishers and subscribers run in separate processes (this test binary re-executed, see
//! `common`) wherever the answer could differ from one process to another; each test binds a
//! port of its own ([`common::free_tcp_port`]).

mod common;

use common::{arg, arg_u64, bus_over as bus, exit_child, say, ChildProc, CHILD_STALL};
use shmbus::transport::{ListenError, Tcp};
use shmbus::{Bus, CreateError, OpenError, RecvError};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::time::Duration;

/// How long a subscriber waits for a publisher process to come up.
const OPEN: Duration = Duration::from_secs(20);

/// The value of message `i` on the topic at `index` in a publisher's list: each topic's own.
fn value(index: u64, i: u64) -> u64 {
    (index + 1) * 1_000_000 + i
}

fn tcp_bus(tcp: Tcp, prefix: &str) -> Bus {
    Bus::builder()
        .prefix(prefix)
        .transport(tcp)
        .build()
        .expect("a bus")
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn child_entry() {
    let Some(role) = common::child_role() else {
        return;
    };
    let code = match role.as_str() {
        "pub-topics" => child_publish_topics(),
        "sub-topic" => child_subscribe_topic(),
        other => panic!("unknown child role {other}"),
    };
    exit_child(code)
}

/// Publish every topic of the comma-separated `topics` on the bus of `spec`; once each has
/// `subs` subscribers, send `count` messages on each (`value(index, i)`), then close (or, with
/// `then=hang`, say SENT and wait to be killed).
fn child_publish_topics() -> i32 {
    let bus = bus(&arg("spec"), &arg("prefix"));
    let topics = arg("topics");
    let mut publishers: Vec<_> = topics
        .split(',')
        .map(|t| {
            bus.publisher::<u64>(t)
                .capacity(64)
                .create()
                .unwrap_or_else(|e| panic!("create {t}: {e}"))
        })
        .collect();
    say("READY");
    let subs = arg_u64("subs") as usize;
    for (p, t) in publishers.iter().zip(topics.split(',')) {
        if !p.wait_for_subscribers(subs, CHILD_STALL) {
            eprintln!("topic {t}: {} of {subs} subscribers came", p.subscribers());
            return 3;
        }
    }
    for i in 0..arg_u64("count") {
        for (index, p) in publishers.iter_mut().enumerate() {
            if let Err(e) = p.send_timeout(value(index as u64, i), CHILD_STALL) {
                eprintln!("send {i} on topic {index}: {e}");
                return 4;
            }
        }
    }
    if common::arg_or("then", "close") == "hang" {
        say("SENT");
        std::thread::sleep(CHILD_STALL);
    }
    0
}

/// Open `topic` on the bus of `spec`, receive `count` messages (`value(index, i)`), then
/// (unless `end=any`) the publisher's close; say `RESULT ok`.
fn child_subscribe_topic() -> i32 {
    let bus = bus(&arg("spec"), &arg("prefix"));
    let topic = arg("topic");
    let index = arg_u64("index");
    let mut subscriber = bus
        .subscriber::<u64>(&topic)
        .open_timeout(OPEN)
        .unwrap_or_else(|e| panic!("open {topic}: {e}"));
    say("READY");
    for i in 0..arg_u64("count") {
        match subscriber.recv_timeout(CHILD_STALL) {
            Ok(Some(sample)) if (sample.seq(), *sample) == (i, value(index, i)) => {}
            Ok(Some(sample)) => {
                eprintln!(
                    "message {i} of {topic}: seq {} value {}",
                    sample.seq(),
                    *sample
                );
                return 4;
            }
            other => {
                eprintln!("message {i} of {topic}: {:?}", other.map(|s| s.map(|s| *s)));
                return 5;
            }
        }
    }
    if common::arg_or("end", "close") == "close" {
        match subscriber.recv_timeout(CHILD_STALL) {
            Err(RecvError::Disconnected) => {}
            other => {
                eprintln!("after the last message: {:?}", other.map(|s| s.map(|s| *s)));
                return 6;
            }
        }
    }
    say(&format!("RESULT ok topic={topic}"));
    0
}

/// Start a publisher process of `topics` on `spec`, waiting for `subs` subscribers a topic.
fn spawn_publisher(spec: &str, prefix: &str, topics: &str, subs: &str, count: &str) -> ChildProc {
    let args = [
        ("spec", spec),
        ("prefix", prefix),
        ("topics", topics),
        ("subs", subs),
        ("count", count),
        ("then", "hang"),
    ];
    let mut child = ChildProc::spawn("pub-topics", &args);
    child.wait_for_line("READY");
    child
}

fn spawn_subscriber(spec: &str, prefix: &str, topic: &str, index: &str, count: &str) -> ChildProc {
    spawn_subscriber_ending(spec, prefix, topic, index, count, "close")
}

/// As `spawn_subscriber`; `end=any` does not wait for the publisher's close.
fn spawn_subscriber_ending(
    spec: &str,
    prefix: &str,
    topic: &str,
    index: &str,
    count: &str,
    end: &str,
) -> ChildProc {
    let args = [
        ("spec", spec),
        ("prefix", prefix),
        ("topic", topic),
        ("index", index),
        ("count", count),
        ("end", end),
    ];
    ChildProc::spawn("sub-topic", &args)
}

#[test]
fn two_topics_share_one_address_and_each_subscriber_gets_its_own() {
    // One publisher process, two topics on one address (the second create would fail with
    // `InUse` if it did not share the first's server); a subscriber process for each topic,
    // running at once, gets every message of its own topic, in order, then the close.
    let port = common::free_tcp_port();
    let spec = format!("tcp:127.0.0.1:{port}");
    let prefix = common::unique_prefix("tcp-two-closed");
    let args = [
        ("spec", spec.as_str()),
        ("prefix", prefix.as_str()),
        ("topics", "a,b"),
        ("subs", "1"),
        ("count", "3000"),
    ];
    let mut publisher = ChildProc::spawn("pub-topics", &args);
    publisher.wait_for_line("READY");
    let a = spawn_subscriber(&spec, &prefix, "a", "0", "3000");
    let b = spawn_subscriber(&spec, &prefix, "b", "1", "3000");
    for (sub, topic) in [(a, "a"), (b, "b")] {
        let done = sub.finish();
        done.assert_success();
        assert_eq!(done.result()["topic"], topic);
    }
    publisher.finish().assert_success();
}

#[test]
fn an_unknown_topic_is_not_found() {
    let port = common::free_tcp_port();
    let spec = format!("tcp:127.0.0.1:{port}");
    let prefix = common::unique_prefix("tcp-unknown");
    // Nobody listening at all.
    match bus(&spec, &prefix).subscriber::<u64>("md.eurusd").open() {
        Err(OpenError::NotFound { topic }) => assert_eq!(topic, "md.eurusd"),
        other => panic!("no listener: {:?}", other.map(|_| ())),
    }
    // A server that has other topics (another process's).
    let publisher = spawn_publisher(&spec, &prefix, "md.eurusd", "1", "0");
    let bus = bus(&spec, &prefix);
    match bus.subscriber::<u64>("md.chfjpy").open() {
        Err(OpenError::NotFound { topic }) => assert_eq!(topic, "md.chfjpy"),
        other => panic!("an unknown topic: {:?}", other.map(|_| ())),
    }
    // The same name under another prefix is another topic.
    let other = common::unique_prefix("tcp-unknown-other");
    match self::bus(&spec, &other)
        .subscriber::<u64>("md.eurusd")
        .open()
    {
        Err(OpenError::NotFound { .. }) => {}
        other => panic!("another prefix: {:?}", other.map(|_| ())),
    }
    // And the known one is there (its subscriber is what the publisher waits for).
    let _known = bus
        .subscriber::<u64>("md.eurusd")
        .open()
        .expect("the known topic opens");
    // History is refused: a socket keeps no past.
    match bus.subscriber::<u64>("md.eurusd").history(1).open() {
        Err(OpenError::Unsupported { transport, .. }) => assert_eq!(transport, "tcp"),
        other => panic!("history: {:?}", other.map(|_| ())),
    }
    publisher.kill();
    let _ = publisher.finish();
}

#[test]
fn beyond_loopback_a_publisher_without_a_token_is_refused_at_create() {
    let port = common::free_tcp_port();
    let prefix = common::unique_prefix("tcp-no-token");
    let mut addrs: Vec<SocketAddr> = vec![
        SocketAddr::from(([0, 0, 0, 0], port)),
        "[::]:1".parse().unwrap(),
    ];
    addrs[1].set_port(port);
    // The machine's own address, if it has one besides loopback (the one a UDP socket would
    // leave by; nothing is sent).
    if let Ok(probe) = std::net::UdpSocket::bind("0.0.0.0:0") {
        if probe.connect("192.0.2.1:9").is_ok() {
            if let Ok(mut own) = probe.local_addr() {
                if !own.ip().is_loopback() && !own.ip().is_unspecified() {
                    own.set_port(port);
                    addrs.push(own);
                }
            }
        }
    }
    for addr in addrs {
        let bus = tcp_bus(Tcp::new(addr), &prefix);
        match bus.publisher::<u64>("t").create() {
            Err(CreateError::Listen {
                addr: refused,
                reason: ListenError::TokenRequired,
                ..
            }) => assert_eq!(refused, addr),
            other => panic!("{addr} without a token: {:?}", other.map(|_| ())),
        }
        // Nothing was bound: the port is still free.
        assert!(
            common::loopback_port_free(port),
            "{addr}: the port was left bound"
        );
    }
    // Loopback needs none.
    let bus = tcp_bus(Tcp::new(loopback(port)), &prefix);
    drop(
        bus.publisher::<u64>("t")
            .create()
            .expect("loopback without a token"),
    );
}

#[test]
fn with_a_token_only_a_subscriber_that_presents_it_is_served() {
    let port = common::free_tcp_port();
    let prefix = common::unique_prefix("tcp-token");
    // The publisher serves every interface; the subscribers come by loopback.
    let served = format!("tcp:0.0.0.0:{port}#s3cret-token");
    let mut publisher = spawn_publisher(&served, &prefix, "md.eurusd", "1", "100");
    let with = |tcp: Tcp| tcp_bus(tcp, &prefix);
    let refused = |tcp: Tcp, topic: &str| match with(tcp).subscriber::<u64>(topic).open() {
        Err(OpenError::Refused { reason, .. }) => reason,
        other => panic!("{topic}: {:?}", other.map(|_| ())),
    };
    let none = refused(Tcp::new(loopback(port)), "md.eurusd");
    assert!(none.contains("requires a token"), "{none}");
    for wrong in [
        &b"s3cret-tokeN"[..],
        b"s3cret-toke",
        b"s3cret-token\0",
        b"x",
    ] {
        let reason = refused(Tcp::new(loopback(port)).token(wrong), "md.eurusd");
        assert!(reason.contains("refused the token"), "{reason}");
    }
    // Without the token, an unknown topic is refused too: nothing is told about the topics.
    refused(Tcp::new(loopback(port)).token(&b"wrong"[..]), "md.unknown");
    // With it, an unknown topic is NotFound, and the known one delivers.
    let right = || Tcp::new(loopback(port)).token(&b"s3cret-token"[..]);
    match with(right()).subscriber::<u64>("md.unknown").open() {
        Err(OpenError::NotFound { .. }) => {}
        other => panic!("an unknown topic with the token: {:?}", other.map(|_| ())),
    }
    let bus = with(right());
    let mut subscriber = bus
        .subscriber::<u64>("md.eurusd")
        .open_timeout(OPEN)
        .expect("the right token opens");
    for i in 0..100 {
        let sample = subscriber
            .recv_timeout(CHILD_STALL)
            .unwrap_or_else(|e| panic!("message {i}: {e}"))
            .unwrap_or_else(|| panic!("message {i}: none before the watchdog"));
        assert_eq!(*sample, value(0, i));
    }
    publisher.wait_for_line("SENT");
    publisher.kill();
    let _ = publisher.finish();
    // A token too long for the wire is refused before anything is sent.
    match with(Tcp::new(loopback(port)).token(vec![b'a'; 257]))
        .subscriber::<u64>("md.eurusd")
        .open()
    {
        Err(OpenError::Unsupported { .. }) => {}
        other => panic!("a 257-byte token: {:?}", other.map(|_| ())),
    }
}

/// A raw TCP connection to the server that behaves badly.
struct Rogue {
    what: &'static str,
    stream: TcpStream,
}

impl Rogue {
    fn connect(port: u16, what: &'static str, send: &[u8]) -> Self {
        let mut stream = TcpStream::connect(loopback(port)).expect("connect");
        if !send.is_empty() {
            stream.write_all(send).expect("send");
        }
        Self { what, stream }
    }

    /// Wait (up to the watchdog) for the server to hang up on it: an end, or a reset.
    fn assert_dropped(mut self) {
        self.stream
            .set_read_timeout(Some(common::WATCHDOG))
            .expect("set a read timeout");
        let mut buf = [0u8; 256];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return,
                // A refusal is the most it may say.
                Ok(n) => assert!(n <= 48, "{}: the server sent {n} bytes", self.what),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("{}: not dropped: {e}", self.what),
            }
        }
    }
}

/// A frame header with the given kind and length, everything else valid.
fn header(kind: u8, len: u32) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0..4].copy_from_slice(b"SHBF");
    h[4] = kind;
    h[5] = 1;
    h[8..12].copy_from_slice(&len.to_le_bytes());
    h
}

#[test]
fn peers_that_send_garbage_or_nothing_do_not_stop_others_being_served() {
    let port = common::free_tcp_port();
    let spec = format!("tcp:127.0.0.1:{port}");
    let prefix = common::unique_prefix("tcp-rogues");
    let mut publisher = spawn_publisher(&spec, &prefix, "t", "2", "2000");
    // Before any real subscriber: connections that say nothing, a few bytes, garbage, a header
    // claiming a huge payload, another frame kind, a subscribe frame cut short; and a flood
    // of silent ones, more than the server holds at once.
    let mut rogues = vec![
        Rogue::connect(port, "silent", b""),
        Rogue::connect(port, "three bytes", b"SHB"),
        Rogue::connect(port, "garbage", &[0xA5; 64]),
        Rogue::connect(port, "huge length", &header(4, u32::MAX)),
        Rogue::connect(port, "a hello", &header(1, 8)),
        Rogue::connect(port, "half a request", &header(4, 100)),
    ];
    let mut subscribe = header(4, 9);
    subscribe.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, b't', 0, 0, 0, 0, 0, 0, 0]);
    rogues.push(Rogue::connect(port, "bad request (reserved bytes)", &{
        let mut s = subscribe.clone();
        s[40 + 5] = 1;
        s
    }));
    for _ in 0..80 {
        rogues.push(Rogue::connect(port, "one of a flood", b""));
    }
    // Two real subscribers, each in a process of its own, are served all the same.
    let subs = [
        spawn_subscriber_ending(&spec, &prefix, "t", "0", "2000", "any"),
        spawn_subscriber_ending(&spec, &prefix, "t", "0", "2000", "any"),
    ];
    for sub in subs {
        sub.finish().assert_success();
    }
    publisher.wait_for_line("SENT");
    // Every rogue is hung up on while the publisher lives: garbage at once, the silent ones
    // when their time is up or when the flood pushes them out.
    for rogue in rogues {
        rogue.assert_dropped();
    }
    publisher.check();
    publisher.kill();
    let _ = publisher.finish();
}

#[test]
fn rogues_are_dropped_while_the_publisher_lives() {
    let port = common::free_tcp_port();
    let spec = format!("tcp:127.0.0.1:{port}");
    let prefix = common::unique_prefix("tcp-rogues-live");
    let publisher = spawn_publisher(&spec, &prefix, "t", "1", "0");
    // Garbage is hung up on at once; silence once the handshake's time is up.
    Rogue::connect(port, "garbage", &[0xA5; 64]).assert_dropped();
    Rogue::connect(port, "silent", b"").assert_dropped();
    // A well-formed request for an unknown topic gets a refusal frame: kind 5, code 1.
    let name = format!("{prefix}nope");
    let mut payload = (name.len() as u16).to_le_bytes().to_vec();
    payload.extend_from_slice(&[0; 6]);
    payload.extend_from_slice(name.as_bytes());
    let mut request = header(4, payload.len() as u32);
    request.extend_from_slice(&payload);
    request.resize(40 + payload.len().div_ceil(8) * 8, 0);
    let mut stream = TcpStream::connect(loopback(port)).expect("connect");
    stream.write_all(&request).expect("send");
    stream
        .set_read_timeout(Some(common::WATCHDOG))
        .expect("a timeout");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read the refusal");
    assert_eq!(answer.len(), 48, "{answer:?}");
    assert_eq!((&answer[0..4], answer[4]), (&b"SHBF"[..], 5));
    assert_eq!(&answer[40..48], &[1, 0, 0, 0, 0, 0, 0, 0]);
    // The real subscriber still opens.
    let _subscriber = bus(&spec, &prefix)
        .subscriber::<u64>("t")
        .open_timeout(OPEN)
        .expect("a real subscriber opens");
    publisher.kill();
    let _ = publisher.finish();
}

#[test]
fn a_second_publisher_on_the_address_gets_a_typed_error() {
    let port = common::free_tcp_port();
    let spec = format!("tcp:127.0.0.1:{port}");
    let prefix = common::unique_prefix("tcp-in-use");
    // Another process on the address.
    let publisher = spawn_publisher(&spec, &prefix, "a", "1", "0");
    match bus(&spec, &prefix).publisher::<u64>("b").create() {
        Err(CreateError::Listen {
            reason: ListenError::InUse,
            ..
        }) => {}
        other => panic!("another process's address: {:?}", other.map(|_| ())),
    }
    publisher.kill();
    let _ = publisher.finish();
    // Once it is dead, the address is this process's (the kernel freed it with the process).
    let port = common::free_tcp_port();
    let bus = tcp_bus(Tcp::new(loopback(port)), &prefix);
    let a = bus.publisher::<u64>("a").create().expect("the first topic");
    let b = bus.publisher::<u64>("b").create().expect("a second topic");
    // The same topic twice.
    match bus.publisher::<u64>("a").create() {
        Err(CreateError::AlreadyExists { topic }) => assert_eq!(topic, "a"),
        other => panic!("a topic twice: {:?}", other.map(|_| ())),
    }
    // The same address with a token: one address, one token.
    match tcp_bus(Tcp::new(loopback(port)).token(&b"t"[..]), &prefix)
        .publisher::<u64>("c")
        .create()
    {
        Err(CreateError::Listen {
            reason: ListenError::TokenMismatch,
            ..
        }) => {}
        other => panic!("another token: {:?}", other.map(|_| ())),
    }
    // Port 0, and a token the wire cannot carry.
    let zero = tcp_bus(Tcp::new(loopback(0)), &prefix)
        .publisher::<u64>("z")
        .create();
    assert!(
        matches!(
            zero,
            Err(CreateError::Listen {
                reason: ListenError::PortZero,
                ..
            })
        ),
        "port 0: {:?}",
        zero.map(|_| ())
    );
    let long = tcp_bus(Tcp::new(loopback(port)).token(vec![1; 257]), &prefix)
        .publisher::<u64>("l")
        .create();
    assert!(
        matches!(
            long,
            Err(CreateError::Listen {
                reason: ListenError::TokenLength,
                ..
            })
        ),
        "a long token: {:?}",
        long.map(|_| ())
    );
    // With one topic gone the server stays; with the last, it goes, and the port is free.
    drop(a);
    assert!(
        !common::loopback_port_free(port),
        "the server went with a topic left"
    );
    drop(b);
    assert!(
        common::loopback_port_frees(port, Duration::from_secs(10)),
        "the port is still bound with the last topic gone"
    );
    // And a new publisher serves it again.
    let _c = bus.publisher::<u64>("c").create().expect("serve again");
}

/// Inodes of the TCP sockets in `pid`'s network namespace whose local or peer port is `port`
/// (from `/proc/PID/net/tcp` and `tcp6`: "sl local rem st ... uid timeout inode").
fn tcp_inodes_on(pid: u32, port: u16) -> std::io::Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port_of = |field: Option<&&str>| {
                field
                    .and_then(|a| a.rsplit_once(':'))
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            };
            let on_port = [1, 2].iter().any(|&i| port_of(fields.get(i)) == Some(port));
            if let (true, Some(Ok(inode))) = (on_port, fields.get(9).map(|i| i.parse())) {
                inodes.insert(inode);
            }
        }
    }
    Ok(inodes)
}

/// Connected TCP sockets of process `pid` (duplicated into this one with `pidfd_getfd`) whose
/// local or peer port is `port`, with their local and peer addresses.
///
/// Only those sockets are duplicated, found by inode: a duplicate of another test's listener,
/// however brief, would keep its port bound after the test closed it, and take a connection
/// meant for nobody.
fn connections_of(pid: u32, port: u16) -> std::io::Result<Vec<(OwnedFd, SocketAddr, SocketAddr)>> {
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid as i32).expect("a pid"),
        rustix::process::PidfdFlags::empty(),
    )?;
    let wanted = tcp_inodes_on(pid, port)?;
    // The numbers first: the descriptors duplicated below must not turn up in the listing.
    let numbers: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut found = Vec::new();
    for n in numbers {
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{n}")).unwrap_or_default();
        let inode = link.to_str().and_then(|l| {
            l.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse::<u64>()
                .ok()
        });
        if !inode.is_some_and(|i| wanted.contains(&i)) {
            continue;
        }
        let fd = match rustix::process::pidfd_getfd(
            &pidfd,
            n,
            rustix::process::PidfdGetfdFlags::empty(),
        ) {
            Ok(fd) => fd,
            // Closed since the listing: not one of the connections asked for, which stay open.
            Err(rustix::io::Errno::BADF) => continue,
            Err(e) => return Err(e.into()),
        };
        let local = rustix::net::getsockname(&fd)
            .ok()
            .and_then(|a| SocketAddr::try_from(a).ok());
        let peer = rustix::net::getpeername(&fd)
            .ok()
            .flatten()
            .and_then(|a| SocketAddr::try_from(a).ok());
        if let (Some(local), Some(peer)) = (local, peer) {
            // A number freed while listing (the listing's own descriptor) may be taken by a
            // duplicate made here: one entry per connection.
            let seen = found.iter().any(|(_, l, p)| (*l, *p) == (local, peer));
            if !seen && (local.port() == port || peer.port() == port) {
                found.push((fd, local, peer));
            }
        }
    }
    Ok(found)
}

#[test]
fn tcp_nodelay_is_set_on_both_ends_of_a_connection() {
    let port = common::free_tcp_port();
    let spec = format!("tcp:127.0.0.1:{port}");
    let prefix = common::unique_prefix("tcp-nodelay");
    let publisher = spawn_publisher(&spec, &prefix, "t", "1", "0");
    let _subscriber = bus(&spec, &prefix)
        .subscriber::<u64>("t")
        .open_timeout(OPEN)
        .expect("open");
    // This process's end: the socket connected to the publisher's port.
    let ours = connections_of(std::process::id(), port).expect("look at this process's sockets");
    let ours: Vec<_> = ours
        .iter()
        .filter(|(_, _, peer)| peer.port() == port)
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "one connection to the publisher: {:?}",
        ours.iter().map(|c| (c.1, c.2)).collect::<Vec<_>>()
    );
    assert!(rustix::net::sockopt::tcp_nodelay(&ours[0].0).unwrap());
    // The publisher's end, in its process: the accepted socket (the hello came through it, so
    // it was accepted and set up before `open` returned).
    match connections_of(publisher.pid(), port) {
        Ok(theirs) => {
            let ours_local = ours[0].1;
            let accepted: Vec<_> = theirs
                .iter()
                .filter(|(_, local, peer)| local.port() == port && *peer == ours_local)
                .collect();
            assert_eq!(accepted.len(), 1, "the publisher's end of the connection");
            assert!(rustix::net::sockopt::tcp_nodelay(&accepted[0].0).unwrap());
            assert!(rustix::net::sockopt::socket_keepalive(&accepted[0].0).unwrap());
        }
        // pidfd_getfd needs ptrace rights over the child, which a sandbox may withhold; the
        // unit test `both_ends_set_nodelay_and_keepalive` covers the code that sets it.
        Err(e) => common::skip(&format!("cannot look at the publisher's sockets: {e}")),
    }
    publisher.kill();
    let _ = publisher.finish();
}
