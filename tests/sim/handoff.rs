//! The exactly-once hand-off under the power-loss simulator. A job reads a
//! source log (written by a producer in the same process with `Interval`
//! durability, so a power loss takes back its unsynced records) and hands
//! each batch to an output log with `append_committing`. The disk is
//! crashed at random moments, in every crash mode; each image is reopened
//! and must show:
//!
//! - the output's checkpoint never stands past the source's end (a SIGKILL
//!   cannot show this: only a power loss takes back source records a
//!   position was committed past, and `Checkpoint::source` syncs the
//!   source below the position first);
//! - the output equal to one uninterrupted run over the source records
//!   below the checkpoint, its count (the checkpoint's state) equal to the
//!   output's length: no record twice, none missing, no batch half there;
//! - the job resumed on the image finishing the copy as one uninterrupted
//!   run would.

use std::time::Duration;

use backbone::sim::{CrashMode, SimStorage};
use backbone::{Checkpoint, Durability, EventLog, Options, Start};

use super::common::SplitMix as Rng;

const SOURCE: &str = "/source";
const OUTPUT: &str = "/output";
const JOB: &str = "copy";

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// What source record `v` (its value is its offset) becomes: nothing for
/// multiples of 4, two records for multiples of 3, else one.
fn outputs(v: u64) -> Vec<u64> {
    match v {
        v if v % 4 == 0 => vec![],
        v if v % 3 == 0 => vec![v * 10, v * 10 + 1],
        v => vec![v * 10],
    }
}

fn open(
    storage: &SimStorage,
    dir: &str,
    durability: Durability,
) -> backbone::Result<EventLog<u64>> {
    Options::new()
        .segment_bytes(1024)
        .max_record_bytes(256)
        .index_interval_bytes(128)
        .durability(durability)
        .close_timeout(Duration::ZERO)
        .simulated(storage)
        .open(dir)
}

struct Job {
    source: EventLog<u64>,
    output: EventLog<u64>,
    next: u64,
    written: u64,
}

impl Job {
    /// Opens both logs on `storage` and resumes from the checkpoint.
    fn open(storage: &SimStorage, output_durability: Durability) -> Result<Job, String> {
        let source = open(
            storage,
            SOURCE,
            Durability::Interval(Duration::from_secs(3600)),
        )
        .map_err(|e| format!("open the source: {e}"))?;
        let output = open(storage, OUTPUT, output_durability)
            .map_err(|e| format!("open the output: {e}"))?;
        let (next, written) = match output
            .last_checkpoint(JOB)
            .map_err(|e| format!("last checkpoint: {e}"))?
        {
            Some(checkpoint) => {
                let next = checkpoint
                    .position_in(&source)
                    .map_err(|e| format!("resume: {e}"))?;
                let state: [u8; 8] = checkpoint
                    .state()
                    .try_into()
                    .map_err(|_| "a state of 8 bytes".to_owned())?;
                (next, u64::from_le_bytes(state))
            }
            None => (0, 0),
        };
        Ok(Job {
            source,
            output,
            next,
            written,
        })
    }

    /// The producer appends `n` records (value = offset).
    fn produce(&self, n: u64) -> Result<(), String> {
        let start = self.source.next_offset();
        let values: Vec<u64> = (start..start + n).collect();
        self.source
            .append_batch(&values)
            .map(drop)
            .map_err(|e| format!("produce: {e}"))
    }

    /// Hands on up to `take` source records in one committing batch.
    fn step(&mut self, take: usize) -> Result<(), String> {
        let batch: Vec<u64> = self
            .source
            .read(Start::Offset(self.next))
            .take(take)
            .map(|r| r.map(|r| r.value))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("read the source: {e}"))?;
        let values: Vec<u64> = batch.iter().flat_map(|&v| outputs(v)).collect();
        let next = self.next + batch.len() as u64;
        let written = self.written + values.len() as u64;
        let checkpoint = Checkpoint::new(JOB)
            .source(&self.source, next)
            .map_err(|e| format!("checkpoint: {e}"))?
            .with_state(written.to_le_bytes().to_vec());
        self.output
            .append_committing(&values, &checkpoint)
            .map_err(|e| format!("append committing: {e}"))?;
        (self.next, self.written) = (next, written);
        Ok(())
    }

    /// The output equals one uninterrupted run over the source below the
    /// job's position.
    fn check(&self) -> Result<(), String> {
        ensure!(
            self.next <= self.source.next_offset(),
            "position {} past the source's end {}",
            self.next,
            self.source.next_offset()
        );
        let expected: Vec<u64> = (0..self.next).flat_map(outputs).collect();
        let found: Vec<u64> = self
            .output
            .read(Start::Beginning)
            .map(|r| r.map(|r| r.value))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("read the output: {e}"))?;
        ensure!(
            found == expected,
            "output of {} records, expected {} for source position {}",
            found.len(),
            expected.len(),
            self.next
        );
        ensure!(
            self.written == found.len() as u64,
            "the checkpoint counts {} records, the output holds {}",
            self.written,
            found.len()
        );
        let source: Vec<u64> = self
            .source
            .read(Start::Beginning)
            .map(|r| r.map(|r| r.value))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("read the source: {e}"))?;
        ensure!(
            source == (0..source.len() as u64).collect::<Vec<_>>(),
            "the source is not its offsets"
        );
        Ok(())
    }
}

/// Runs the job and the producer for `steps` random steps.
fn run(job: &mut Job, rng: &mut Rng, steps: u64) -> Result<(), String> {
    for _ in 0..steps {
        if rng.below(3) > 0 {
            job.produce(rng.range_inclusive(1, 12))?;
        }
        if rng.below(8) == 0 {
            // The producer's background sync, now and then.
            job.source.sync().map_err(|e| format!("sync: {e}"))?;
        }
        job.step(rng.range_inclusive(1, 10) as usize)?;
    }
    Ok(())
}

fn trial(seed: u64, output_durability: Durability) -> Result<u64, String> {
    let mut rng = Rng(seed);
    let storage = SimStorage::new();
    let mut job = Job::open(&storage, output_durability)?;
    let steps = rng.range_inclusive(1, 40);
    run(&mut job, &mut rng, steps)?;
    let mut images = 0;
    for mode in CrashMode::ALL {
        let seeds = match mode {
            CrashMode::PowerLossOrdered | CrashMode::PowerLossReorder => 3,
            _ => 1,
        };
        for image_seed in 0..seeds {
            let ctx = |e: String| format!("{mode:?} image {image_seed}: {e}");
            let image = storage.crash(image_seed, mode);
            let mut resumed = Job::open(&image, output_durability).map_err(ctx)?;
            resumed.check().map_err(ctx)?;
            // Resumed, it goes on as if nothing happened: more input, the
            // copy finished, the output still one uninterrupted run.
            let mut more = Rng(seed ^ image_seed);
            run(&mut resumed, &mut more, 5).map_err(ctx)?;
            while resumed.next < resumed.source.next_offset() {
                resumed.step(10).map_err(ctx)?;
            }
            resumed.check().map_err(ctx)?;
            images += 1;
        }
    }
    Ok(images)
}

#[test]
fn a_hand_off_is_exactly_once_on_every_crash_image() {
    let mut checked = 0;
    let mut problems = Vec::new();
    for seed in 0..40u64 {
        for durability in [
            Durability::EveryAppend,
            // Its batches reach the disk unsynced: a power loss tears them.
            Durability::Interval(Duration::from_secs(3600)),
            Durability::Buffered,
        ] {
            match trial(seed, durability) {
                Ok(images) => checked += images,
                Err(e) => problems.push(format!("seed {seed} {durability:?}: {e}")),
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(checked, 40 * 3 * 8);
}
