//! Property tests of stream jobs: random inputs through `filter`,
//! `flat_map`, `key_by`, `window` and `aggregate` agree with a plain
//! in-memory computation of the same result, and a job stopped (cleanly,
//! or by dropping its runtime under it, as a kill) and started again at
//! random points with random batch sizes writes exactly what one
//! uninterrupted run writes.

use std::collections::BTreeMap;
use std::time::Duration;

use backbone::stream::{Lateness, Window, Windowed};
use backbone::{EventLog, Start, Timestamp};
use proptest::prelude::*;

const SECOND: u64 = 1_000_000;

/// A source event: key, value, event time in seconds.
type Input = (u8, u32, u64);

#[derive(Clone, Copy, Debug)]
enum Kind {
    Tumbling,
    Hopping,
    Count,
}

fn window(kind: Kind) -> Window {
    match kind {
        Kind::Tumbling => Window::tumbling(Duration::from_secs(10)),
        Kind::Hopping => Window::hopping(Duration::from_secs(10), Duration::from_secs(5)),
        Kind::Count => Window::count(3),
    }
}

/// What the operators before the window make of one source value.
fn expand(value: u32) -> Vec<u32> {
    match value {
        v if v % 5 == 0 => vec![],
        v if v % 3 == 0 => vec![v, v + 1],
        v => vec![v],
    }
}

/// The windows' results, computed directly: (key, start, end, sum) in
/// seconds, sorted.
fn model(kind: Kind, lateness: u64, input: &[Input]) -> Vec<(u8, u64, u64, u64)> {
    let mut newest: Option<u64> = None;
    let mut sums: BTreeMap<(u8, u64, u64), u64> = BTreeMap::new();
    let mut counts: BTreeMap<u8, (u64, u64, u64, u64)> = BTreeMap::new();
    let mut results = Vec::new();
    for &(key, value, secs) in input {
        for v in expand(value) {
            let t = secs * SECOND;
            if let Kind::Count = kind {
                let c = counts.entry(key).or_insert((0, u64::MAX, 0, 0));
                c.0 += 1;
                c.1 = c.1.min(t);
                c.2 = c.2.max(t);
                c.3 += u64::from(v);
                if c.0 == 3 {
                    results.push((key, c.1 / SECOND, c.2 / SECOND, c.3));
                    counts.remove(&key);
                }
                continue;
            }
            if newest.is_some_and(|n| t < n.saturating_sub(lateness * SECOND)) {
                continue; // late
            }
            newest = Some(newest.map_or(t, |n| n.max(t)));
            let (size, step) = match kind {
                Kind::Tumbling => (10, 10),
                _ => (10, 5),
            };
            let mut start = (secs + 1).saturating_sub(size).div_ceil(step) * step;
            while start <= secs {
                *sums.entry((key, start, start + size)).or_default() += u64::from(v);
                start += step;
            }
        }
    }
    if let Some(newest) = newest {
        let watermark = newest.saturating_sub(lateness * SECOND);
        for ((key, start, end), sum) in sums {
            // Closed once the watermark reached its end.
            if end * SECOND <= watermark {
                results.push((key, start, end, sum));
            }
        }
    }
    results.sort();
    results
}

/// Runs the job over `input`, stopping and starting it again after each
/// offset in `stops`, with the batch sizes in `batches` in turn.
fn run(
    dir: &std::path::Path,
    kind: Kind,
    lateness: u64,
    input: &[Input],
    stops: &[u64],
    batches: &[usize],
) -> Vec<backbone::Record<Windowed<u8, u64>>> {
    let source: EventLog<Input> = EventLog::open(dir.join("source")).unwrap();
    let output: EventLog<Windowed<u8, u64>> = EventLog::open(dir.join("output")).unwrap();
    source.append_batch(input).unwrap();
    let end = source.next_offset();
    let mut lives = stops
        .iter()
        .copied()
        .filter(|&s| s < end)
        .collect::<Vec<_>>();
    lives.push(end);
    for (life, until) in lives.into_iter().enumerate() {
        // Every other life ends abruptly: its runtime is dropped under it,
        // so it writes nothing more (no state at a clean stop), as a kill.
        let runtime = backbone::stream::Runtime::new(1).unwrap();
        let job = source
            .stream("windows", Start::Beginning)
            .event_time(
                |(_, _, secs)| Timestamp::from_micros(secs * SECOND),
                Lateness::bounded(Duration::from_secs(lateness)),
            )
            .flat_map(|(key, value, secs)| {
                expand(value)
                    .into_iter()
                    .map(move |v| (key, v, secs))
                    .collect::<Vec<_>>()
            })
            .key_by(|(key, _, _)| *key)
            .window(window(kind))
            .aggregate(|| 0u64, |sum, (_, v, _)| *sum += u64::from(*v))
            .stream()
            .batch_size(batches[life % batches.len()])
            .on(&runtime)
            .to(&output)
            .unwrap();
        job.wait_for(until).unwrap();
        end_life(life, runtime, job);
    }
    output.read(Start::Beginning).map(|r| r.unwrap()).collect()
}

/// Ends a life of a job: every other one abruptly, its runtime dropped
/// under it, so it writes nothing more (no state at a clean stop), as a
/// kill; the others with a clean stop.
fn end_life(life: usize, runtime: backbone::stream::Runtime, job: backbone::stream::Job) {
    if life % 2 == 1 {
        drop(runtime);
        assert!(job.join().is_err(), "ended by its runtime's drop");
    } else {
        job.stop();
        job.join().unwrap();
    }
}

fn inputs() -> impl Strategy<Value = Vec<Input>> {
    // Times wander forward with jitter, so some values come late.
    prop::collection::vec((0u8..4, 0u32..100, 0u64..12), 0..120).prop_map(|steps| {
        let mut clock = 100u64;
        steps
            .into_iter()
            .map(|(key, value, jitter)| {
                clock += jitter % 4;
                (key, value, clock.saturating_sub(jitter))
            })
            .collect()
    })
}

fn kinds() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::Tumbling), Just(Kind::Hopping), Just(Kind::Count)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn windows_agree_with_a_direct_computation_across_restarts(
        kind in kinds(),
        lateness in 0u64..8,
        input in inputs(),
        stops in prop::collection::vec(0u64..120, 0..4),
        batches in prop::collection::vec(1usize..9, 1..4),
    ) {
        let mut stops = stops;
        stops.sort_unstable();
        let whole_dir = tempfile::tempdir().unwrap();
        let whole = run(whole_dir.path(), kind, lateness, &input, &[], &[1024]);
        let cut_dir = tempfile::tempdir().unwrap();
        let cut = run(cut_dir.path(), kind, lateness, &input, &stops, &batches);
        // The same records at the same offsets, with the same source times.
        let strip = |records: &[backbone::Record<Windowed<u8, u64>>]| -> Vec<_> {
            records.iter().map(|r| (r.offset, r.source_time, r.value.clone())).collect()
        };
        prop_assert_eq!(strip(&cut), strip(&whole));
        let mut got: Vec<_> = whole
            .iter()
            .map(|r| {
                let w = &r.value;
                (w.key, w.start.as_micros() / SECOND, w.end.as_micros() / SECOND, w.value)
            })
            .collect();
        got.sort_unstable();
        prop_assert_eq!(got, model(kind, lateness, &input));
    }
}

/// A merge of two sources through `flat_map` and a `scan` that numbers
/// each source's outputs, stopped (cleanly or by dropping its runtime)
/// and started again whenever it has reached the positions in `stops`:
/// the outputs of each source, in the output, as `(source, value, n)`.
fn run_merge(
    dir: &std::path::Path,
    inputs: [&[u32]; 2],
    stops: &[(u64, u64)],
    batches: &[usize],
) -> Vec<(u8, u32, u64)> {
    let sources: Vec<EventLog<(u8, u32)>> = (0..2)
        .map(|i| EventLog::open(dir.join(format!("source-{i}"))).unwrap())
        .collect();
    for (i, (source, input)) in sources.iter().zip(inputs).enumerate() {
        let tagged: Vec<(u8, u32)> = input.iter().map(|&v| (i as u8, v)).collect();
        source.append_batch(&tagged).unwrap();
    }
    let output: EventLog<(u8, u32, u64)> = EventLog::open(dir.join("output")).unwrap();
    let ends = (sources[0].next_offset(), sources[1].next_offset());
    let mut lives: Vec<(u64, u64)> = stops
        .iter()
        .map(|&(a, b)| (a.min(ends.0), b.min(ends.1)))
        .collect();
    lives.push(ends);
    for (life, (a, b)) in lives.into_iter().enumerate() {
        let runtime = backbone::stream::Runtime::new(1).unwrap();
        let job = sources[0]
            .stream("merged", Start::Beginning)
            .merge(&sources[1])
            .flat_map(|(source, value)| {
                expand(value)
                    .into_iter()
                    .map(move |v| (source, v))
                    .collect::<Vec<_>>()
            })
            .scan([0u64; 2], |counts, (source, v)| {
                counts[usize::from(source)] += 1;
                Some((source, v, counts[usize::from(source)]))
            })
            .batch_size(batches[life % batches.len()])
            .on(&runtime)
            .to(&output)
            .unwrap();
        job.wait_for(a).unwrap();
        job.wait_for_in(&sources[1], b).unwrap();
        end_life(life, runtime, job);
    }
    output
        .read(Start::Beginning)
        .map(|r| r.unwrap().value)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn a_merge_hands_each_source_over_once_in_order_across_restarts(
        a in prop::collection::vec(0u32..100, 0..150),
        b in prop::collection::vec(0u32..100, 0..150),
        stops in prop::collection::vec((0u64..150, 0u64..150), 0..4),
        batches in prop::collection::vec(1usize..9, 1..4),
    ) {
        let mut stops = stops;
        stops.sort_unstable();
        let dir = tempfile::tempdir().unwrap();
        let got = run_merge(dir.path(), [&a, &b], &stops, &batches);
        for (source, input) in [&a, &b].into_iter().enumerate() {
            let expected: Vec<(u8, u32, u64)> = input
                .iter()
                .flat_map(|&v| expand(v))
                .zip(1u64..)
                .map(|(v, n)| (source as u8, v, n))
                .collect();
            let from_it: Vec<(u8, u32, u64)> = got
                .iter()
                .copied()
                .filter(|&(s, _, _)| usize::from(s) == source)
                .collect();
            prop_assert_eq!(from_it, expected);
        }
    }
}
