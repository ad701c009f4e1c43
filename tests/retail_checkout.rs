//! The main example, `examples/retail_checkout`, run as a new user runs
//! it: the built binary with small flags, twice on one directory. The
//! report's figures are checked against what the input implies, and
//! against the data lake's JSON Lines files, which hold every raw and
//! derived event: counts per stream, services and jobs caught up, the
//! windows and flags recomputed from the checkouts, the lake holding each
//! record once, and a second run that continues the same history.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const ORDERS: u64 = 3_000;
/// The example's tumbling windows and their allowed lateness.
const MINUTE: u64 = 60_000_000;

/// Runs the example and returns its report.
fn run(dir: &Path, fresh: bool) -> String {
    let mut command = Command::new(common::example_binary("retail_checkout"));
    command.arg("--orders").arg(ORDERS.to_string());
    command.arg("--seed").arg("7").arg("--batch").arg("128");
    command.arg("--lake-file-bytes").arg("65536");
    command.arg("--dir").arg(dir);
    if fresh {
        command.arg("--fresh");
    }
    let output = command.output().expect("run the example");
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the example failed ({}):\n{report}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    report
}

/// The numbers on the report's line that starts with `label`.
fn figures(report: &str, label: &str) -> Vec<u64> {
    let line = report
        .lines()
        .find(|line| line.starts_with(label))
        .unwrap_or_else(|| panic!("no line `{label}` in the report:\n{report}"));
    line[label.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|word| !word.is_empty())
        .map(|word| word.parse().unwrap())
        .collect()
}

fn figure(report: &str, label: &str) -> u64 {
    figures(report, label)[0]
}

/// Every line of the lake's files for `log`, by offset, checking that no
/// offset is there twice and none is missing.
fn lake(dir: &Path, log: &str) -> Vec<Value> {
    let mut lines = BTreeMap::new();
    for entry in std::fs::read_dir(dir.join("lake").join(log)).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(name.ends_with(".jsonl"), "a file the sink left: {name}");
        let first: u64 = name.trim_end_matches(".jsonl").parse().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, line) in text.lines().enumerate() {
            let value: Value = serde_json::from_str(line).unwrap();
            let offset = value["offset"].as_u64().unwrap();
            if i == 0 {
                assert_eq!(offset, first, "{name} is named by its first offset");
            }
            assert!(
                lines.insert(offset, value).is_none(),
                "{log}: offset {offset} twice"
            );
        }
    }
    let values: Vec<Value> = lines.into_values().collect();
    for (i, value) in values.iter().enumerate() {
        assert_eq!(value["offset"].as_u64(), Some(i as u64), "{log}: no gap");
    }
    values
}

/// Checks one run's report against the lake, `runs` runs into the
/// history.
fn check(dir: &Path, report: &str, runs: u64) {
    let total = ORDERS * runs;
    // This run's producers and the whole history.
    let appended = figures(report, "orders appended: ");
    assert_eq!(appended[0], ORDERS);
    assert_eq!(appended[1] + appended[2], ORDERS, "web + mobile");
    assert_eq!(figure(report, "shelf readings appended: "), ORDERS / 10);
    let checkouts = lake(dir, "checkouts");
    assert_eq!(checkouts.len() as u64, total);
    assert_eq!(figure(report, "checkouts: "), total);
    let units: u64 = checkouts
        .iter()
        .map(|c| c["event"]["qty"].as_u64().unwrap())
        .sum();
    assert_eq!(figures(report, "checkouts: ")[1], units);
    let ids: BTreeSet<u64> = checkouts
        .iter()
        .map(|c| c["event"]["order_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (0..total).collect(), "each order id once; ids go on");
    assert_eq!(lake(dir, "telemetry").len() as u64, total / 10);
    assert_eq!(figure(report, "telemetry: "), total / 10);

    // Inventory: a change per checkout, restocks where it fell low.
    let inventory = lake(dir, "inventory");
    assert_eq!(inventory.len() as u64, total);
    assert_eq!(figure(report, "inventory changes: "), total);
    let due = inventory
        .iter()
        .filter(|l| l["event"]["restock_due"] == true)
        .count() as u64;
    assert_eq!(lake(dir, "restocks").len() as u64, due);
    assert_eq!(figure(report, "restocks: "), due);
    let last_level: BTreeMap<String, i64> = inventory
        .iter()
        .map(|l| {
            let e = &l["event"];
            (
                e["sku"].as_str().unwrap().to_owned(),
                e["after"].as_i64().unwrap(),
            )
        })
        .collect();
    let table = figures(report, "table stock: ");
    assert_eq!(table[0], last_level.len() as u64, "SKUs in the table");
    assert_eq!(table[1], total, "the table's position in the inventory");

    // Windows: the closed minutes per SKU, recomputed from the checkouts.
    let late: u64 = report
        .lines()
        .filter(|l| l.starts_with("job "))
        .map(|l| figures(l, "job ")[2])
        .sum();
    let max_ts = checkouts
        .iter()
        .map(|c| c["event"]["ts_micros"].as_u64().unwrap())
        .max()
        .unwrap();
    let closed_before = max_ts - MINUTE;
    let mut sales: BTreeMap<(String, u64), u64> = BTreeMap::new();
    let mut per_customer: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for c in &checkouts {
        let e = &c["event"];
        let minute = e["ts_micros"].as_u64().unwrap() / MINUTE * MINUTE;
        if minute + MINUTE <= closed_before {
            *sales
                .entry((e["sku"].as_str().unwrap().to_owned(), minute))
                .or_default() += e["qty"].as_u64().unwrap();
            *per_customer
                .entry((e["customer_id"].as_u64().unwrap(), minute))
                .or_default() += 1;
        }
    }
    let windows: BTreeMap<(String, u64), u64> = lake(dir, "sales-per-minute")
        .iter()
        .map(|w| {
            let e = &w["event"];
            let start = e["start"].as_u64().unwrap();
            (
                (e["key"].as_str().unwrap().to_owned(), start),
                e["value"].as_u64().unwrap(),
            )
        })
        .collect();
    if late == 0 {
        assert_eq!(windows, sales, "every closed minute per SKU, summed");
    } else {
        // (A producer stalled past the lateness: its late records are
        // counted, never folded into a minute already emitted.)
        for (key, units) in &windows {
            assert!(units <= &sales[key], "{key:?}");
        }
    }
    let flagged: BTreeSet<(u64, u64)> = lake(dir, "flags")
        .iter()
        .map(|f| {
            let e = &f["event"];
            (
                e["customer_id"].as_u64().unwrap(),
                e["minute_start_micros"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: BTreeSet<(u64, u64)> = per_customer
        .into_iter()
        .filter(|(_, orders)| *orders >= 5)
        .map(|(key, _)| key)
        .collect();
    if late == 0 {
        assert_eq!(
            flagged, expected,
            "customers with 5 or more orders in a minute"
        );
        assert!(!flagged.is_empty(), "the bursts were flagged");
    }

    // Services and jobs: all caught up with the whole history.
    for consumer in ["contact", "lake", "loyalty", "shipping"] {
        let at = figures(report, &format!("consumer {consumer}: at "));
        assert_eq!(at, [total, 0], "{consumer}: position and lag");
    }
    assert_eq!(
        figures(report, "shipping: parcels per warehouse this run ")
            .iter()
            .sum::<u64>(),
        ORDERS
    );
    assert_eq!(
        figure(report, "contact: thank-you messages this run: "),
        ORDERS
    );
    // Loyalty came mid-run 1 from the beginning of history, then resumed.
    let loyalty_from = if runs == 1 { 0 } else { total - ORDERS };
    let expected_points: u64 = checkouts[loyalty_from as usize..]
        .iter()
        .map(|c| {
            let e = &c["event"];
            e["price_cents"].as_u64().unwrap() * e["qty"].as_u64().unwrap() / 100
        })
        .sum();
    assert_eq!(
        figure(report, "loyalty: points granted this run: "),
        expected_points
    );
    let alerting = figures(report, "alerting: orders seen from offset ");
    assert!(
        alerting[0] >= total - ORDERS && alerting[0] <= total,
        "from now: mid-run"
    );
    assert_eq!(
        alerting[1],
        total - alerting[0],
        "every order from its start on"
    );
    for job in [
        "inventory",
        "reorder",
        "sales-per-minute",
        "suspicious-orders",
    ] {
        // (The reorder job's source, the inventory, has a record per
        // checkout too.)
        let line = figures(report, &format!("job {job}: at "));
        assert_eq!((line[0], line[3]), (total, 0), "{job}'s position and lag");
    }
    // The lake holds every record of every log, once.
    let lines: u64 = [
        "checkouts",
        "telemetry",
        "inventory",
        "restocks",
        "sales-per-minute",
        "flags",
    ]
    .iter()
    .map(|log| lake(dir, log).len() as u64)
    .sum();
    assert_eq!(figures(report, "lake: ")[1], lines);
}

#[test]
fn the_shop_runs_and_a_second_run_continues_its_history() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shop");
    let first = run(&dir, true);
    check(&dir, &first, 1);
    assert!(first.contains("(0 orders already in history)"));
    let second = run(&dir, false);
    check(&dir, &second, 2);
    assert!(second.contains(&format!("({ORDERS} orders already in history)")));
    // The jobs resumed rather than started over: this run's outputs are
    // only the new checkouts' inventory changes.
    assert_eq!(
        figures(&second, "job inventory: at ")[1],
        ORDERS,
        "the inventory job handled only what is new"
    );
}

/// Starts the example on `dir` and kills it (SIGKILL) after `ms`.
fn kill_after(dir: &Path, ms: u64) {
    let mut child = Command::new(common::example_binary("retail_checkout"))
        .args([
            "--orders",
            "20000",
            "--batch",
            "64",
            "--lake-file-bytes",
            "16384",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the example");
    std::thread::sleep(std::time::Duration::from_millis(ms));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_data_lake_holds_each_record_once_across_kills() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shop");
    for ms in [150, 400, 60, 250, 700, 30] {
        kill_after(&dir, ms);
    }
    // A last run to the end: the lake then holds every record of every
    // log once (`lake` checks no offset is there twice and none is
    // missing), with no file left half written.
    let report = run(&dir, false);
    for (log, label) in [
        ("checkouts", "checkouts: "),
        ("telemetry", "telemetry: "),
        ("inventory", "inventory changes: "),
        ("restocks", "restocks: "),
        ("sales-per-minute", "sales-per-minute windows: "),
        ("flags", "flagged customer-minutes: "),
    ] {
        assert_eq!(
            lake(&dir, log).len() as u64,
            figure(&report, label),
            "{log}: the lake against the log"
        );
    }
    let ids: BTreeSet<u64> = lake(&dir, "checkouts")
        .iter()
        .map(|c| c["event"]["order_id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ids.len() as u64,
        figure(&report, "checkouts: "),
        "no order twice"
    );
}
