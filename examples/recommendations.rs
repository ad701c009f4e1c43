//! Real-time music suggestions from a listener's plays.
//!
//! A player app appends every play (listener, track, genre) to the `plays`
//! log. Two things read it, each on its own:
//!
//! - the table `genre-charts` folds the plays into one chart per genre
//!   (plays per track), kept current and readable at any time;
//! - the stream job `suggest` groups each listener's plays into windows of
//!   their last ten (a keyed count window), finds the genre they played
//!   most, numbers the listener's suggestions (a `scan`), joins the genre's
//!   chart from the table and appends a `Suggestion` of its most played
//!   track the listener has not just heard to the `suggestions` log.
//!
//! A subscriber, the app's "for you" screen, prints the first few
//! suggestions as they arrive. Run it again on the same `--dir`: the plays
//! go on from where the history ended, the table and the job resume where
//! they committed (a listener's half-filled window included), and every
//! play is counted once in the charts and in exactly one window.
//!
//! A suggestion meets whichever version of its genre's chart the table
//! holds at that moment (the table and the job run side by side), so the
//! tracks suggested may differ from one run to another; how many
//! suggestions there are, and for whom, depends only on the plays.
//!
//! ```text
//! cargo run --release --example recommendations
//! cargo run --release --example recommendations -- --users 2000 --plays 200000 --fresh
//! ```

mod shared;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use backbone::stream::{Table, Window, Windowed};
use backbone::{EventLog, Start};
use clap::Parser;
use serde::{Deserialize, Serialize};

use shared::{Place, Report, Rng};

/// One play of one track by one listener.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Play {
    user: u32,
    track: u32,
    genre: String,
}

/// What the job suggests to a listener after each window of their plays.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Suggestion {
    user: u32,
    /// This listener's suggestions so far, this one included.
    nth: u64,
    /// The genre the listener played most in their last window.
    genre: String,
    /// Of the window's plays, how many were of that genre.
    genre_plays: u32,
    /// The genre's most played track the listener has not just heard, and
    /// its plays by everyone; `None` if the chart did not have the genre
    /// yet.
    track: Option<(u32, u64)>,
}

/// A listener's last window of plays: plays per genre and the tracks heard.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
struct Taste {
    genres: BTreeMap<String, u32>,
    heard: Vec<u32>,
}

impl Taste {
    fn add(&mut self, play: &Play) {
        *self.genres.entry(play.genre.clone()).or_default() += 1;
        self.heard.push(play.track);
    }

    /// The genre played most (the first by name among equals), and its
    /// plays.
    fn favourite(&self) -> (String, u32) {
        let mut best = (String::new(), 0);
        for (genre, &n) in &self.genres {
            if n > best.1 {
                best = (genre.clone(), n);
            }
        }
        best
    }
}

/// A genre's chart: plays per track, by everyone.
type Chart = BTreeMap<u32, u64>;

/// Plays in a listener's window.
const RECENT: u64 = 10;
const GENRES: [&str; 8] = [
    "ambient",
    "classical",
    "folk",
    "hip-hop",
    "jazz",
    "rock",
    "soul",
    "techno",
];
const TRACKS_PER_GENRE: u64 = 25;
/// Plays the player app sends in one upload.
const UPLOAD: usize = 64;
/// How often the player app uploads.
const UPLOAD_EVERY: Duration = Duration::from_millis(1);

#[derive(Parser, Debug)]
#[command(about = "Listeners' plays drive real-time suggestions through a stream job and a table")]
struct Args {
    /// Listeners.
    #[arg(long, default_value_t = 200)]
    users: u32,
    /// Plays to append in this run, by all listeners.
    #[arg(long, default_value_t = 20_000)]
    plays: u64,
    #[command(flatten)]
    place: Place,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let (dir, plays, suggestions): (_, EventLog<Play>, EventLog<Suggestion>) =
        args.place
            .open("backbone-recommendations", "plays", "suggestions")?;
    let plays_start = plays.next_offset();
    let suggestions_start = suggestions.next_offset();

    // The "for you" screen: every suggestion from now on, live.
    let for_you = shared::watch(&suggestions, "for you", 4, describe)?;

    let charts: Table<String, Chart> = plays.table(
        "genre-charts",
        |play| play.genre.clone(),
        |chart: &mut Chart, play| *chart.entry(play.track).or_default() += 1,
    )?;
    let suggest = plays
        .stream("suggest", Start::Beginning)
        .key_by(|play| play.user)
        .window(Window::count(RECENT))
        .aggregate(Taste::default, Taste::add)
        .stream()
        .scan(
            HashMap::<u32, u64>::new(),
            |nth, window: Windowed<u32, Taste>| {
                let n = nth.entry(window.key).or_default();
                *n += 1;
                Some((window.key, *n, window.value))
            },
        )
        .left_join(
            &charts,
            |(_, _, taste)| taste.favourite().0,
            |(user, nth, taste), chart| {
                let (genre, genre_plays) = taste.favourite();
                let track = chart.and_then(|chart| {
                    chart
                        .iter()
                        .filter(|(track, _)| !taste.heard.contains(track))
                        .max_by_key(|&(&track, &n)| (n, std::cmp::Reverse(track)))
                        .map(|(&track, &n)| (track, n))
                });
                Suggestion {
                    user,
                    nth,
                    genre,
                    genre_plays,
                    track,
                }
            },
        )
        .to(&suggestions)?;

    // The player app: uploads of plays, as listeners play.
    let clock = Instant::now();
    let mut rng = Rng::new(args.place.seed, plays_start);
    let mut upload = Vec::with_capacity(UPLOAD);
    for _ in 0..args.plays {
        upload.push(play(args.place.seed, args.users, &mut rng));
        if upload.len() == UPLOAD {
            plays.append_batch(&upload)?;
            upload.clear();
            std::thread::sleep(UPLOAD_EVERY);
        }
    }
    plays.append_batch(&upload)?;
    let plays_end = plays.next_offset();
    let appended_in = clock.elapsed();
    charts.wait_for(plays_end)?;
    suggest.wait_for(plays_end)?;
    let figures = suggest.figures();
    println!(
        "player: {} plays appended in {:.2} s; charts and suggestions caught up {:.2} s after the start",
        plays_end - plays_start,
        appended_in.as_secs_f64(),
        clock.elapsed().as_secs_f64()
    );
    suggest.stop();
    suggest.join()?;

    // What the history implies: one suggestion per full window of each
    // listener, and every play counted once in the charts.
    let mut per_user: HashMap<u32, u64> = HashMap::new();
    for rec in plays.read(Start::Beginning) {
        *per_user.entry(rec?.value.user).or_default() += 1;
    }
    let expected: u64 = per_user.values().map(|n| n / RECENT).sum();
    let (mut distinct, mut without_chart) = (HashSet::new(), 0u64);
    for rec in suggestions.read(Start::Beginning) {
        let s = rec?.value;
        without_chart += u64::from(s.track.is_none());
        distinct.insert((s.user, s.nth));
    }
    let chart_plays: u64 = charts.to_map().values().flat_map(|c| c.values()).sum();

    let mut report = Report::default();
    report.add("users", args.users);
    report.add("plays_appended", plays_end - plays_start);
    report.add(
        "suggestions_written",
        suggestions.next_offset() - suggestions_start,
    );
    report.add("plays_in_history", plays.len());
    report.add("listeners_in_history", per_user.len());
    report.add("suggestions_in_history", suggestions.len());
    report.add("suggestions_expected", expected);
    report.add("distinct_suggestions", distinct.len());
    report.add("suggestions_without_chart", without_chart);
    report.add("chart_genres", charts.len());
    report.add("chart_plays", chart_plays);
    report.add("charts_table_position", charts.position());
    report.add("charts_table_lag", charts.lag());
    report.add("suggest_job_position", figures.position);
    report.add("suggest_job_lag", figures.lag);

    // The table reads the plays log: it stops before the log closes.
    charts.stop();
    charts.join()?;
    drop(charts);
    report.finish(
        (dir, plays, suggestions),
        ["plays", "suggestions"],
        ("for_you", for_you),
    )?;
    Ok(())
}

/// A deterministic stand-in for listeners: each has a favourite genre and
/// a second one (fixed by the seed), and plays mostly those, the popular
/// tracks of a genre more often than the rest.
fn play(seed: u64, users: u32, rng: &mut Rng) -> Play {
    let user = rng.below(users.max(1).into()) as u32;
    let mut taste = Rng::new(seed, u64::from(user) | 1 << 32);
    let favourite = taste.below(GENRES.len() as u64);
    let second = taste.below(GENRES.len() as u64);
    let genre = if rng.chance(60) {
        favourite
    } else if rng.chance(60) {
        second
    } else {
        rng.below(GENRES.len() as u64)
    };
    let skewed = rng.below(TRACKS_PER_GENRE) * rng.below(TRACKS_PER_GENRE) / TRACKS_PER_GENRE;
    Play {
        user,
        track: (genre * TRACKS_PER_GENRE + skewed) as u32,
        genre: GENRES[genre as usize].to_owned(),
    }
}

fn describe(s: &Suggestion) -> String {
    let why = format!(
        "listener {} played {} of their last {RECENT} in {}",
        s.user, s.genre_plays, s.genre
    );
    match s.track {
        Some((track, plays)) => format!("{why}: try track {track} ({plays} plays)"),
        None => format!("{why}: no chart for it yet"),
    }
}
