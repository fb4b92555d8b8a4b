//! An audio-style real-time loop: an "audio thread" hands fixed-size frames to a consumer in
//! another process, and never blocks.
//!
//! ```text
//! cargo run --release --example audio_spsc [SECONDS]     # default 3
//! ```
//!
//! The example re-executes itself as the consumer (`audio_spsc consumer <topic>`), standing
//! for a disk writer or a network sender. Its audio thread runs a callback once per period
//! (128 stereo frames at 48 kHz, 2.67 ms), as a sound card driver would. In the callback it only
//! calls `try_loan`, which never waits, makes no syscall, takes no lock and allocates nothing:
//! it renders straight into a slot of the shared ring and sends it. When the ring is full (the
//! consumer fell behind) the period is dropped and counted as an xrun, instead of stalling the
//! audio. The consumer stalls now and then on purpose, so that some xruns show.
//!
//! The consumer sleeps on a futex between frames; the audio thread then makes one `FUTEX_WAKE`
//! (a syscall that never blocks) for a frame that finds it asleep. A consumer that polls
//! (`WaitStrategy::Spin`) would spare the audio thread even that.

use bytemuck::{Pod, Zeroable};
use shmbus::{Bus, Publisher, RecvError, TryLoanError, WaitStrategy};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SAMPLE_RATE: u32 = 48_000;
const CHANNELS: usize = 2;
/// Frames per period: one callback's worth.
const PERIOD_FRAMES: usize = 128;
/// Periods the ring holds: about 21 ms of audio.
const RING_PERIODS: u64 = 8;
/// How long the consumer stalls once a second, to provoke xruns: longer than the ring lasts.
const CONSUMER_STALL: Duration = Duration::from_millis(30);

/// One period of interleaved stereo samples, with its period number.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
struct Period {
    index: u64,
    samples: [f32; PERIOD_FRAMES * CHANNELS],
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("consumer") => consumer(args.get(2).ok_or("consumer needs a topic")?),
        seconds => {
            let seconds = seconds.map_or(Ok(3.0), str::parse::<f64>)?;
            producer(Duration::from_secs_f64(seconds))
        }
    }
}

/// What the audio thread counted.
#[derive(Debug, Default)]
struct AudioStats {
    periods: u64,
    sent: u64,
    xruns: u64,
    longest_callback: Duration,
}

fn producer(run_for: Duration) -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::open_default()?;
    let topic = format!("example.audio.{}", std::process::id());
    let publisher = bus
        .publisher::<Period>(&topic)
        .capacity(RING_PERIODS)
        .create()?;

    let mut consumer = Command::new(std::env::current_exe()?)
        .args(["consumer", &topic])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut consumer_out = BufReader::new(consumer.stdout.take().ok_or("no stdout")?).lines();
    // Start the audio once the consumer listens, so that its start-up is not counted as xruns.
    match consumer_out.next() {
        Some(Ok(line)) if line == "ready" => {}
        other => return Err(format!("the consumer did not start: {other:?}").into()),
    }

    println!(
        "audio: {:.2} ms periods into a ring of {RING_PERIODS}, for {run_for:?}",
        period().as_secs_f64() * 1e3
    );
    let wakes_before = shmbus::wait::stats().futex_wakes;
    let audio = std::thread::Builder::new()
        .name("audio".into())
        .spawn(move || audio_thread(publisher, run_for))?;
    let stats = audio.join().map_err(|_| "the audio thread panicked")?;
    let wakes = shmbus::wait::stats().futex_wakes - wakes_before;
    // The publisher was dropped at the end of the audio thread: the topic is closed, and the
    // consumer ends once it has read what is left.

    println!(
        "audio: {} periods, {} sent, {} xruns (ring full), {wakes} futex wakes, \
         longest callback {:?}",
        stats.periods, stats.sent, stats.xruns, stats.longest_callback
    );
    for line in consumer_out {
        println!("{}", line?);
    }
    let status = consumer.wait()?;
    if !status.success() {
        return Err(format!("the consumer failed: {status}").into());
    }
    Ok(())
}

fn period() -> Duration {
    Duration::from_secs_f64(PERIOD_FRAMES as f64 / SAMPLE_RATE as f64)
}

/// The real-time loop. Sleeping between periods stands for the driver's interrupt; the
/// callback itself must never block.
fn audio_thread(mut publisher: Publisher<Period>, run_for: Duration) -> AudioStats {
    let mut stats = AudioStats::default();
    let mut phase = 0.0f32;
    let start = Instant::now();
    let mut next = start;
    while next - start < run_for {
        let began = Instant::now();
        callback(&mut publisher, &mut stats, &mut phase);
        stats.longest_callback = stats.longest_callback.max(began.elapsed());
        next += period();
        if let Some(left) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(left);
        }
    }
    stats
}

/// One period: no allocation, no lock, no syscall (but the wake of a sleeping consumer), no
/// wait.
#[inline]
fn callback(publisher: &mut Publisher<Period>, stats: &mut AudioStats, phase: &mut f32) {
    let index = stats.periods;
    stats.periods += 1;
    // Render the period whether or not it can be delivered: the oscillator keeps its phase.
    let step = 440.0 * std::f32::consts::TAU / SAMPLE_RATE as f32;
    let start_phase = *phase;
    *phase = (*phase + step * PERIOD_FRAMES as f32) % std::f32::consts::TAU;
    match publisher.try_loan() {
        Ok(mut slot) => {
            // Rendered straight into shared memory.
            slot.index = index;
            for (i, frame) in slot.samples.chunks_exact_mut(CHANNELS).enumerate() {
                let s = (start_phase + step * i as f32).sin() * 0.25;
                frame.fill(s);
            }
            slot.send();
            stats.sent += 1;
        }
        Err(TryLoanError::Full) => stats.xruns += 1,
        Err(_) => stats.xruns += 1,
    }
}

/// The consumer process: receives every period it is sent, notices the ones lost to xruns
/// (gaps in the period numbers), and stalls once a second.
fn consumer(topic: &str) -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::open_default()?;
    let mut subscriber = bus
        .subscriber::<Period>(topic)
        .wait(WaitStrategy::default())
        .open_timeout(Duration::from_secs(10))?;
    println!("ready");
    let (mut received, mut lost, mut expected, mut peak) = (0u64, 0u64, 0u64, 0.0f32);
    let mut last_stall = Instant::now();
    loop {
        match subscriber.recv_timeout(Duration::from_secs(10)) {
            Ok(Some(period)) => {
                lost += period.index.saturating_sub(expected);
                expected = period.index + 1;
                peak = period.samples.iter().fold(peak, |p, s| p.max(s.abs()));
                received += 1;
            }
            Ok(None) => return Err("no period for 10 s".into()),
            Err(RecvError::Disconnected) => break,
            Err(e) => return Err(e.into()),
        }
        if last_stall.elapsed() >= Duration::from_secs(1) {
            // A slow disk, a page fault storm, a busy CPU: the ring fills meanwhile.
            std::thread::sleep(CONSUMER_STALL);
            last_stall = Instant::now();
        }
    }
    println!("consumer: {received} periods received, {lost} lost to xruns, peak {peak:.2}");
    Ok(())
}
