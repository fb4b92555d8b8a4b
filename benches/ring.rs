//! In-process ring throughput, in messages per second, at 8 B, 64 B and 1 KiB payloads: a
//! publisher and a subscriber on two threads of one process, and one thread that sends then
//! receives each message, one a call and in batches of 64. Every case goes through the public
//! API on a topic of its own.
//!
//! The two threads are pinned to two different CPUs when the process may use two, so that the
//! scheduler does not move them between samples. This bench is for comparing commits of the
//! ring quickly. Figures that claim to be
//! inter-process, beside their raw limits, come from `shmbus bench` (two pinned processes).

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytemuck::Pod;
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
use shmbus::{Bus, Publisher, Subscriber, WaitStrategy};

/// Slots per ring: the same as the throughput cases of `shmbus bench`.
const CAPACITY: u64 = 1024;

/// A bus whose segment names hold this process's id and a timestamp, so that runs never meet.
fn bus() -> Bus {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        % 1_000_000_000_000;
    Bus::builder()
        .prefix(&format!("shmbus-criterion-{}-{stamp}.", std::process::id()))
        .build()
        .expect("a valid prefix")
}

/// The first two CPUs this process may use: where the publisher and the subscriber threads
/// run. `None` with a single CPU, where the threads are left to the scheduler.
fn two_cpus() -> Option<[usize; 2]> {
    let allowed = sched_getaffinity(None).ok()?;
    let mut cpus = (0..CpuSet::MAX_CPU).filter(|&cpu| allowed.is_set(cpu));
    Some([cpus.next()?, cpus.next()?])
}

/// Pins the calling thread to `cpu`, if there is one. A failure only costs stability.
fn pin(cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        let mut set = CpuSet::new();
        set.set(cpu);
        let _ = sched_setaffinity(None, &set);
    }
}

/// A fresh topic: its publisher and subscriber, both polling. The publisher unlinks the segment
/// when dropped.
fn topic<T: Pod>(bus: &Bus, name: &str) -> (Publisher<T>, Subscriber<T>) {
    let publisher = bus
        .publisher::<T>(name)
        .capacity(CAPACITY)
        .wait(WaitStrategy::Spin)
        .create()
        .expect("create the topic");
    let subscriber = bus
        .subscriber::<T>(name)
        .wait(WaitStrategy::Spin)
        .open()
        .expect("open the topic");
    (publisher, subscriber)
}

/// Publisher and subscriber on two threads. The clock runs from the moment both threads are
/// ready to the moment both are done, measured by a third thread between two barriers, so
/// neither thread start nor topic creation is counted.
fn two_threads<T: Pod + Send>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    bus: &Bus,
    size: &str,
    message: fn(u64) -> T,
) {
    let cpus = two_cpus();
    group.bench_function(format!("two-threads/{size}"), |b| {
        b.iter_custom(|iters| {
            let (mut publisher, mut subscriber) = topic::<T>(bus, &format!("two-threads-{size}"));
            // Publisher, subscriber and this thread.
            let barrier = Barrier::new(3);
            std::thread::scope(|s| {
                s.spawn(|| {
                    pin(cpus.map(|c| c[0]));
                    barrier.wait();
                    for i in 0..iters {
                        publisher.send(message(i)).unwrap();
                    }
                    barrier.wait();
                });
                s.spawn(|| {
                    pin(cpus.map(|c| c[1]));
                    barrier.wait();
                    for _ in 0..iters {
                        let sample = subscriber.recv().expect("receive");
                        black_box(*sample);
                    }
                    barrier.wait();
                });
                barrier.wait();
                let start = Instant::now();
                barrier.wait();
                start.elapsed()
            })
        });
    });
}

/// One thread sends a message, then receives it: the cost of both calls with no other core
/// involved.
fn one_thread<T: Pod>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    bus: &Bus,
    size: &str,
    message: fn(u64) -> T,
) {
    group.bench_function(format!("send-then-recv/{size}"), |b| {
        let (mut publisher, mut subscriber) = topic::<T>(bus, &format!("one-thread-{size}"));
        let mut i = 0u64;
        b.iter(|| {
            publisher.send(message(i)).unwrap();
            i += 1;
            let sample = subscriber.try_recv().expect("receive").expect("a message");
            black_box(*sample);
        });
    });
}

/// Messages a batch in `one_thread_batches`.
const BATCH: usize = 64;

/// One thread sends a batch of [`BATCH`], then receives it (`try_send_many`,
/// `try_recv_many`): what the batch calls cost a message, beside `send-then-recv`.
fn one_thread_batches<T: Pod>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    bus: &Bus,
    size: &str,
    message: fn(u64) -> T,
) {
    group.bench_function(format!("batch-send-then-recv/{size}"), |b| {
        let (mut publisher, mut subscriber) = topic::<T>(bus, &format!("one-thread-batch-{size}"));
        let mut i = 0u64;
        b.iter(|| {
            let sent = publisher
                .try_send_many(BATCH, |slot| {
                    *slot = message(i);
                    i += 1;
                })
                .expect("send");
            assert_eq!(sent, BATCH);
            let got = subscriber
                .try_recv_many(BATCH, |m| {
                    black_box(*m);
                })
                .expect("receive");
            assert_eq!(got, BATCH);
        });
    });
}

fn ring_throughput(c: &mut Criterion) {
    let bus = bus();
    let mut group = c.benchmark_group("spsc");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(3));
    two_threads::<u64>(&mut group, &bus, "8B", |i| i);
    two_threads::<[u64; 8]>(&mut group, &bus, "64B", |i| [i; 8]);
    two_threads::<[u64; 128]>(&mut group, &bus, "1KiB", |i| [i; 128]);
    one_thread::<u64>(&mut group, &bus, "8B", |i| i);
    one_thread::<[u64; 8]>(&mut group, &bus, "64B", |i| [i; 8]);
    one_thread::<[u64; 128]>(&mut group, &bus, "1KiB", |i| [i; 128]);
    group.finish();
    // A batch a step: the throughput counts its messages.
    let mut group = c.benchmark_group("spsc");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.measurement_time(Duration::from_secs(3));
    one_thread_batches::<u64>(&mut group, &bus, "8B", |i| i);
    one_thread_batches::<[u64; 8]>(&mut group, &bus, "64B", |i| [i; 8]);
    group.finish();
}

criterion_group!(benches, ring_throughput);
criterion_main!(benches);
