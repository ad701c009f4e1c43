//! The scenario examples (`examples/iot_trigger.rs`,
//! `examples/recommendations.rs`), run as their users run them: the built
//! binary with small flags, twice on the same directory (and once more
//! fresh, to see that a seed gives the same input). Each test checks
//! the report's figures against what the flags and the input imply
//! (counts, totals, offsets, positions after a second run), not only that
//! the example exited 0.
//!
//! `cargo test` with no target selected builds the examples beside the
//! test binaries (`target/<profile>/examples/`); `cargo test --test
//! scenario_examples` does not, so each test first asks the cargo that
//! runs it to build its example (a no-op when it is fresh), and fails
//! with a clear message when the binary is still missing.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

/// A report's figures, `key: value` lines after `== report ==`.
#[derive(Debug)]
struct Report {
    example: &'static str,
    figures: BTreeMap<String, String>,
}

impl Report {
    fn text(&self, key: &str) -> &str {
        self.figures.get(key).unwrap_or_else(|| {
            panic!(
                "{}'s report has no `{key}`: {:#?}",
                self.example, self.figures
            )
        })
    }

    fn num(&self, key: &str) -> u64 {
        let text = self.text(key);
        text.parse()
            .unwrap_or_else(|_| panic!("{}'s `{key}` is not a number: {text:?}", self.example))
    }

    /// A `first..next` offset range.
    fn range(&self, key: &str) -> (u64, u64) {
        let text = self.text(key);
        let (first, next) = text
            .split_once("..")
            .unwrap_or_else(|| panic!("{}'s `{key}` is not a range: {text:?}", self.example));
        (first.parse().unwrap(), next.parse().unwrap())
    }
}

/// Runs `example` with `args`, checks it succeeded, and reads its report.
fn run(example: &'static str, args: &[&str]) -> Report {
    let output = Command::new(common::example_binary(example))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {example}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{example} {args:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report = stdout
        .split_once("== report ==\n")
        .unwrap_or_else(|| panic!("{example} printed no report:\n{stdout}"))
        .1;
    let figures = report
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect();
    Report { example, figures }
}

/// Runs `example` with `flags` on one directory three times: fresh, again
/// to continue that history, and fresh once more, which must give the
/// first run's `same` figures (the same seed on the same history gives
/// the same input). Returns the first two reports.
fn runs(example: &'static str, flags: &[&str], same: &[&str]) -> [Report; 2] {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(example);
    let dir = dir.to_str().unwrap();
    let run_on = |fresh: bool| {
        let mut args = flags.to_vec();
        args.extend(["--dir", dir]);
        if fresh {
            args.push("--fresh");
        }
        run(example, &args)
    };
    let (first, second, again) = (run_on(true), run_on(false), run_on(true));
    for key in same {
        assert_eq!(
            again.num(key),
            first.num(key),
            "{example}'s {key}, {flags:?}"
        );
    }
    [first, second]
}

/// Checks that a run's two logs continue the history of the runs before
/// it: `<log>_offsets` starts at 0 and ends past the records of the runs
/// before (`history`) and of this run (`added`). Returns the totals so far.
fn continues(report: &Report, logs: [&str; 2], history: [u64; 2], added: [u64; 2]) -> [u64; 2] {
    let mut totals = history;
    for ((log, total), added) in logs.iter().zip(&mut totals).zip(added) {
        *total += added;
        assert_eq!(
            report.range(&format!("{log}_offsets")),
            (0, *total),
            "{log}"
        );
    }
    totals
}

#[test]
fn iot_trigger_completes_each_trigger_once_across_runs() {
    let (devices, readings) = (3u64, 100u64);
    let flags = ["--devices", "3", "--readings", "100", "--seed", "7"];
    let shift = devices * readings;
    let same = [
        "battery_low_readings",
        "dirty_floor_readings",
        "completions_written",
    ];
    let mut history = [0, 0]; // readings, completions
    for (run, report) in runs("iot_trigger", &flags, &same).iter().enumerate() {
        let low = report.num("battery_low_readings");
        let dirty = report.num("dirty_floor_readings");
        let written = report.num("completions_written");
        assert_eq!(report.num("devices"), devices);
        assert_eq!(report.num("readings_appended"), shift);
        assert!(low > 0 && dirty > 0, "run {run}: seed 7 gives both kinds");
        assert!(
            low + dirty < shift,
            "run {run}: most readings call for nothing"
        );
        // One function per trigger of this run's readings: none for the
        // readings a run before it handled.
        assert_eq!(report.num("functions_run_recharge"), low, "run {run}");
        assert_eq!(report.num("functions_run_clean"), dirty, "run {run}");
        assert_eq!(written, low + dirty, "run {run}: a completion per function");
        assert_eq!(report.num("dock_app_received"), written, "run {run}");
        history = continues(
            report,
            ["devices", "completions"],
            history,
            [shift, written],
        );
        let [readings, completions] = history;
        assert_eq!(report.num("readings_in_history"), readings);
        assert_eq!(report.num("completions_in_history"), completions);
        assert_eq!(report.num("triggers_in_history"), completions, "run {run}");
        assert_eq!(report.num("distinct_completions"), completions, "run {run}");
        assert_eq!(report.num("trigger_job_position"), readings);
        assert_eq!(report.num("trigger_job_lag"), 0);
    }
}

#[test]
fn recommendations_suggest_once_per_window_across_runs() {
    const RECENT: u64 = 10; // plays in a listener's window, as in the example
    let (users, plays) = (20u64, 600u64);
    let flags = ["--users", "20", "--plays", "600", "--seed", "3"];
    let same = [
        "suggestions_written",
        "listeners_in_history",
        "chart_genres",
    ];
    let reports = runs("recommendations", &flags, &same);
    assert!(reports[0].num("suggestions_written") > 0);
    let mut history = [0, 0]; // plays, suggestions
    for (run, report) in reports.iter().enumerate() {
        let written = report.num("suggestions_written");
        assert_eq!(report.num("users"), users);
        assert_eq!(report.num("plays_appended"), plays);
        assert_eq!(report.num("for_you_received"), written, "run {run}");
        history = continues(report, ["plays", "suggestions"], history, [plays, written]);
        let [plays, suggestions] = history;
        assert_eq!(report.num("plays_in_history"), plays);
        // Every play counted once in the charts, across restarts.
        assert_eq!(report.num("chart_plays"), plays, "run {run}");
        let genres = report.num("chart_genres");
        assert!((1..=8).contains(&genres), "run {run}: {genres} genres");
        // One suggestion per full window of each listener's plays over
        // the whole history (a window half-filled in one run is completed
        // in the next), each once.
        let expected = report.num("suggestions_expected");
        let listeners = report.num("listeners_in_history");
        assert!(listeners <= users);
        assert!(
            expected * RECENT <= plays && plays < (expected + listeners) * RECENT,
            "run {run}: {expected} windows of {RECENT} from {plays} plays of {listeners} listeners"
        );
        assert_eq!(report.num("suggestions_in_history"), expected, "run {run}");
        assert_eq!(report.num("suggestions_in_history"), suggestions);
        assert_eq!(report.num("distinct_suggestions"), suggestions, "run {run}");
        for position in ["suggest_job_position", "charts_table_position"] {
            assert_eq!(report.num(position), plays, "run {run}: {position}");
        }
        assert_eq!(report.num("suggest_job_lag"), 0);
        assert_eq!(report.num("charts_table_lag"), 0);
    }
}
