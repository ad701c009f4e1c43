//! Event-driven functions for a fleet of robot vacuums.
//!
//! Each vacuum reports its telemetry (battery level, dirt-sensor readings)
//! from its own thread into the `devices` log; none of them knows who
//! listens. A trigger, the stream job `vacuum-triggers`, watches that log
//! live: a "battery low" reading starts a function that sends the vacuum
//! home to charge, a "dirty floor" reading one that schedules a cleaning
//! run. Each function is a thread that exists only while it runs: it is
//! spawned for its event, does its work, hands back a completion event and
//! ends. The job appends the completions to the `completions` log together
//! with its position in `devices` (one all-or-nothing batch), so across
//! crashes and restarts every trigger has exactly one completion: a
//! function whose batch a crash took back runs again, and its first
//! completion was never written. A "dock app" subscribes to the
//! completions live and prints the first few.
//!
//! Run it again on the same `--dir` and the fleet reports another shift:
//! offsets go on, and the trigger resumes after the last reading it
//! handled, firing only for the new ones.
//!
//! ```text
//! cargo run --release --example iot_trigger
//! cargo run --release --example iot_trigger -- --devices 32 --readings 5000 --fresh
//! ```

mod shared;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backbone::{EventLog, Start};
use clap::Parser;
use serde::{Deserialize, Serialize};

use shared::{Place, Report, Rng};

/// One telemetry reading of one vacuum.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Reading {
    device: u32,
    /// The device's reading number: this shift's numbers start at the
    /// history's length when the shift began, so they never repeat.
    seq: u64,
    sensor: Sensor,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
enum Sensor {
    Battery { percent: u8 },
    Floor { room: u8, dirt: u8 },
}

/// What a reading calls for, if anything.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Task {
    /// Send the vacuum home to charge.
    Recharge,
    /// Schedule a cleaning run of a room.
    Clean,
}

/// A function's result: the event it appends when its work is done.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Completion {
    device: u32,
    /// The reading that triggered it.
    reading_seq: u64,
    task: Task,
    outcome: String,
}

/// Below this battery level a vacuum goes home.
const BATTERY_LOW: u8 = 20;
/// From this dirt level (0 to 100) a room gets a cleaning run.
const DIRTY: u8 = 90;
const ROOMS: u64 = 6;
/// How often a vacuum takes a reading.
const READING_EVERY: Duration = Duration::from_millis(1);

/// The trigger's rule.
fn task_for(reading: &Reading) -> Option<Task> {
    match reading.sensor {
        Sensor::Battery { percent } if percent < BATTERY_LOW => Some(Task::Recharge),
        Sensor::Floor { dirt, .. } if dirt >= DIRTY => Some(Task::Clean),
        _ => None,
    }
}

#[derive(Parser, Debug)]
#[command(
    about = "Robot vacuums report telemetry; a trigger starts a short-lived function per \
                   battery-low or dirty-floor reading, which appends a completion"
)]
struct Args {
    /// Vacuums, each appending from its own thread.
    #[arg(long, default_value_t = 8)]
    devices: u32,
    /// Readings per vacuum in this run.
    #[arg(long, default_value_t = 500)]
    readings: u64,
    #[command(flatten)]
    place: Place,
}

/// Functions started per task, counted as the trigger starts them.
#[derive(Default)]
struct Started {
    recharge: AtomicU64,
    clean: AtomicU64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let (dir, devices, completions): (_, EventLog<Reading>, EventLog<Completion>) = args
        .place
        .open("backbone-iot-trigger", "devices", "completions")?;
    let shift_start = devices.next_offset();
    let completions_start = completions.next_offset();

    // The dock app: told of every completion from now on, live.
    let dock_app = shared::watch(&completions, "dock app", 3, |c| {
        format!("vacuum {} {:?} done: {}", c.device, c.task, c.outcome)
    })?;

    // The trigger: a named job, so a restart resumes where it committed.
    let started = Arc::new(Started::default());
    let counts = started.clone();
    let trigger = devices
        .stream("vacuum-triggers", Start::Beginning)
        .flat_map(move |reading: Reading| {
            let task = task_for(&reading)?;
            let count = match task {
                Task::Recharge => &counts.recharge,
                Task::Clean => &counts.clean,
            };
            count.fetch_add(1, Ordering::Relaxed);
            Some(run_function(task, reading))
        })
        .batch_size(64)
        .to(&completions)?;

    // The fleet: each vacuum appends its readings as it takes them.
    let clock = Instant::now();
    let fleet: Vec<_> = (0..args.devices)
        .map(|device| {
            let log = devices.clone();
            let rng = Rng::new(args.place.seed ^ shift_start.rotate_left(32), device.into());
            let readings = args.readings;
            std::thread::spawn(move || vacuum(&log, device, rng, shift_start, readings))
        })
        .collect();
    let (mut low, mut dirty) = (0u64, 0u64);
    for device in fleet {
        let (l, d) = device.join().expect("a vacuum's thread")?;
        low += l;
        dirty += d;
    }
    let shift_end = devices.next_offset();
    let appended_in = clock.elapsed();
    trigger.wait_for(shift_end)?;
    let figures = trigger.figures();
    println!(
        "fleet: {} readings appended in {:.2} s; trigger caught up {:.2} s after the start",
        shift_end - shift_start,
        appended_in.as_secs_f64(),
        clock.elapsed().as_secs_f64()
    );
    trigger.stop();
    trigger.join()?;

    // Every trigger in the whole history has exactly one completion.
    let mut triggers_in_history = 0u64;
    for rec in devices.read(Start::Beginning) {
        triggers_in_history += u64::from(task_for(&rec?.value).is_some());
    }
    let mut seen = HashSet::new();
    for rec in completions.read(Start::Beginning) {
        let rec = rec?;
        seen.insert((rec.value.device, rec.value.reading_seq, rec.value.task));
    }

    let mut report = Report::default();
    report.add("devices", args.devices);
    report.add("readings_per_device", args.readings);
    report.add("readings_appended", shift_end - shift_start);
    report.add("battery_low_readings", low);
    report.add("dirty_floor_readings", dirty);
    report.add(
        "functions_run_recharge",
        started.recharge.load(Ordering::Relaxed),
    );
    report.add("functions_run_clean", started.clean.load(Ordering::Relaxed));
    report.add(
        "completions_written",
        completions.next_offset() - completions_start,
    );
    report.add("readings_in_history", devices.len());
    report.add("triggers_in_history", triggers_in_history);
    report.add("completions_in_history", completions.len());
    report.add("distinct_completions", seen.len());
    report.add("trigger_job_position", figures.position);
    report.add("trigger_job_lag", figures.lag);
    report.finish(
        (dir, devices, completions),
        ["devices", "completions"],
        ("dock_app", dock_app),
    )?;
    Ok(())
}

/// One vacuum's shift: `readings` readings, appended one by one. Returns
/// how many were battery-low and dirty-floor readings.
fn vacuum(
    log: &EventLog<Reading>,
    device: u32,
    mut rng: Rng,
    first_seq: u64,
    readings: u64,
) -> backbone::Result<(u64, u64)> {
    let (mut low, mut dirty) = (0, 0);
    let mut battery = 60 + rng.below(41) as u8;
    for seq in first_seq..first_seq + readings {
        let sensor = if rng.chance(40) {
            battery = battery.saturating_sub(1 + rng.below(4) as u8);
            let percent = battery;
            if percent < BATTERY_LOW {
                // The vacuum goes home and comes back charged.
                battery = 100;
            }
            Sensor::Battery { percent }
        } else {
            Sensor::Floor {
                room: rng.below(ROOMS) as u8,
                dirt: rng.below(101) as u8,
            }
        };
        let reading = Reading {
            device,
            seq,
            sensor,
        };
        match task_for(&reading) {
            Some(Task::Recharge) => low += 1,
            Some(Task::Clean) => dirty += 1,
            None => {}
        }
        log.append(&reading)?;
        std::thread::sleep(READING_EVERY);
    }
    Ok((low, dirty))
}

/// Starts the function for `task`: a thread that lives only while it
/// does its work, and hands back its completion. Its outcome depends only
/// on the reading, so a batch run again after a crash gives the same
/// completions.
fn run_function(task: Task, reading: Reading) -> Completion {
    let name = format!("fn-{task:?}-{}-{}", reading.device, reading.seq).to_lowercase();
    let function = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let mut rng = Rng::new(reading.seq, reading.device.into());
            let outcome = match reading.sensor {
                Sensor::Battery { percent } => format!(
                    "sent home from {} m away at {percent}%, charged to 100%",
                    1 + rng.below(40)
                ),
                Sensor::Floor { room, dirt } => format!(
                    "room {room} (dirt {dirt}) cleaned in {} min",
                    5 + u64::from(dirt) / 4 + rng.below(10)
                ),
            };
            Completion {
                device: reading.device,
                reading_seq: reading.seq,
                task,
                outcome,
            }
        })
        .expect("spawn a function's thread");
    function.join().expect("a function panicked")
}
